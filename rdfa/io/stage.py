"""What every stage script shares: its command line, logging, paths and HDF5 outputs."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .atomic import remove_stale_temporaries
from .params import load_params

log = logging.getLogger("rdfa")


def parser(description: str, distractors: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset", required=True, help="dataset name (a folder under data/)")
    if distractors:
        p.add_argument("--set", required=True, help="distractor set added to the dataset's database "
                       "(params.yaml: distractors: {dataset: set})")
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.add_argument("--root", default=".", help="project root holding data/ and features/ (default: .)")
    return p


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


class Paths:
    """Where each stage reads and writes, for one dataset (the order of dvc.yaml)."""

    def __init__(self, root: str | Path, dataset: str):
        root = Path(root)
        self.dataset = dataset
        self.data = root / "data" / dataset
        self.images = self.data / "images"
        self.gnd = self.data / "gnd.json"
        self.work = root / "features" / dataset
        self.features = self.work / "features.h5"
        self.points = self.work / "points.h5"
        self.regions = self.work / "regions.h5"
        self.pca = self.work / "pca.h5"
        self.descriptors = self.work / "descriptors.h5"
        self.whitened = self.work / "whitened.h5"
        self.ranks = self.work / "ranks.json"
        self.ranks_qe = self.work / "ranks_qe.json"
        self.matches = self.work / "matches.h5"
        self.search_info = self.work / "search_info.json"
        self.methods = self.work / "methods.json"
        self.per_query_ap = self.work / "per_query_ap.json"
        self.plots = root / "plots" / dataset
        self.metrics = root / "metrics" / f"{dataset}.json"
        self.results = root / "results" / f"{dataset}.json"
        self.report = root / "reports" / dataset


class DistractorPaths:
    """Where the distractor stages read and write, for one dataset and distractor set."""

    def __init__(self, root: str | Path, dataset: str, distractor_set: str):
        root = Path(root)
        self.main = Paths(root, dataset)
        self.dataset, self.set = dataset, distractor_set
        self.name = f"{dataset}+{distractor_set}"  # how metrics/ and features/ name the pair
        self.work = root / "features" / self.name
        self.shards = self.work / "shards"
        self.index = self.shards / "index.json"
        self.ranks = self.work / "ranks.json"
        self.ranks_qe = self.work / "ranks_qe.json"
        self.search_info = self.work / "search_info.json"
        self.methods = self.work / "methods.json"


def run_stage(main, description: str, argv=None, outputs=None, distractors: bool = False) -> int:
    """Parse the common arguments, run ``main(dataset, params, paths)``, report errors plainly.

    ``distractors``: the stage also takes ``--set`` and gets :class:`DistractorPaths`.

    ``outputs(paths)``: the files / folders the stage writes. Temporaries that
    an interrupted run of this stage left beside them are removed first (see
    :func:`rdfa.io.atomic.stale_temporaries`); nothing else is touched.
    """
    args = parser(description, distractors).parse_args(argv)
    configure_logging()
    start = time.time()
    try:
        params = load_params(args.params)
        paths = DistractorPaths(args.root, args.dataset, args.set) if distractors else Paths(args.root, args.dataset)
        if outputs is not None:
            for path in remove_stale_temporaries(outputs(paths)):
                log.info("removed %s, left by an interrupted run", path)
        main(args.dataset, params, paths)
    except (ValueError, RuntimeError, OSError) as err:
        log.error("%s", err)
        return 1
    log.info("done in %.1f s", time.time() - start)
    return 0


@contextmanager
def h5_output(target: Path):
    """An HDF5 file written to a temporary sibling and renamed onto ``target`` when complete."""
    import h5py

    from .atomic import atomic_path

    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f


@contextmanager
def worker_map(workers: int, initializer, initargs: tuple = ()):
    """A ``map(fn, jobs, chunksize)`` over ``workers`` processes that yields results in job order.

    Each process runs ``initializer(*initargs)`` first (to open its own files: an HDF5
    handle must not cross a fork). With one worker everything runs in this process. Since
    results come back in job order and every job is independent, what a stage writes does
    not depend on the number of workers (``runtime.workers``).
    """
    if workers <= 1:
        initializer(*initargs)
        yield lambda fn, jobs, chunksize=1: map(fn, jobs)
        return
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(workers, initializer=initializer, initargs=initargs)
    try:
        yield pool.imap
    finally:
        pool.terminate()
