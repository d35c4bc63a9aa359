"""What every stage script shares: its command line, logging, paths and HDF5 outputs."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..settings import RuntimeSettings, load_settings
from .atomic import remove_stale_temporaries

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
        self.root = root
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
        self.method_fits = self.work / "method_fits.h5"
        self.method_vectors = self.work / "method_vectors.h5"
        self.per_query_ap = self.work / "per_query_ap.json"
        self.plots = root / "plots" / dataset
        self.metrics = root / "metrics" / f"{dataset}.json"
        self.results = root / "results" / f"{dataset}.json"
        self.report = root / "reports" / dataset

    def absolute(self) -> Paths:
        """The same paths from the absolute project root (for processes whose working directory differs)."""
        return Paths(self.root.absolute(), self.dataset)


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


#: glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc's malloc reuse freed blocks instead of handing them back to the kernel.

    The per-image steps allocate and free arrays of a few MB per image; by
    default glibc maps each afresh and unmaps it when freed (or trims the
    heap), so every image pays its pages' faults again: ``python
    bench/kernels.py malloc`` (the methods stage's pooling of 1,000 COIL-100
    maps) measured 5.7 s, 1.2 s of it in the kernel, 1,261 page faults per
    image; 4.0 s, 0.1 s and 13 with this. Blocks up to ``mmap_threshold``
    (glibc's largest) come from the heap, which keeps up to
    ``trim_threshold`` bytes free at its top. Memory use then stays near
    its peak, which the arrays reach anyway. Inherited by forked workers;
    False (and nothing changed) where malloc is not glibc's.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))


def run_stage(main, description: str, argv=None, outputs=None, distractors: bool = False) -> int:
    """Parse the common arguments, run ``main(dataset, settings, paths)`` (``settings``: the checked
    :class:`rdfa.settings.Settings` of ``--params``), report errors plainly.

    ``distractors``: the stage also takes ``--set`` and gets :class:`DistractorPaths`.

    ``outputs(paths)``: the files / folders the stage writes. Temporaries that
    an interrupted run of this stage left beside them are removed first (see
    :func:`rdfa.io.atomic.stale_temporaries`); nothing else is touched.
    """
    args = parser(description, distractors).parse_args(argv)
    configure_logging()
    keep_freed_memory()
    start = time.time()
    name = f"{Path(sys.argv[0]).stem}@{args.dataset}" + (f"+{args.set}" if distractors else "")
    previous = handle_interrupts(name)
    try:
        settings = load_settings(args.params)
        paths = DistractorPaths(args.root, args.dataset, args.set) if distractors else Paths(args.root, args.dataset)
        if outputs is not None:
            for path in remove_stale_temporaries(outputs(paths)):
                log.info("removed %s, left by an interrupted run", path)
        main(args.dataset, settings, paths)
    except (ValueError, RuntimeError, OSError) as err:
        log.error("%s", err)
        return 1
    except KeyboardInterrupt:  # raised by code that put Python's own SIGINT handler back
        _interrupted(name)
    finally:
        signal.signal(signal.SIGINT, previous)
    log.info("done in %.1f s", time.time() - start)
    return 0


#: Exit status of a stage stopped by Ctrl+C (SIGINT): 128 + 2, as a shell reports it.
INTERRUPTED_STATUS = 130


def handle_interrupts(name: str):
    """Make SIGINT (Ctrl+C) stop this process at once: one line on stderr naming ``name`` (the stage), exit
    status :data:`INTERRUPTED_STATUS`; returns the handler it replaces.

    Python's default raises ``KeyboardInterrupt`` wherever the main thread is, and where that is a
    library callback (a weakref callback, a ``__del__``) Python prints "Exception ignored" and runs
    on: a Ctrl+C 4 s into the features stage was swallowed once in five tries (the stage and the
    pipeline ran on and ended with status 0), and the other four printed a traceback. Here nothing
    is raised: the handler ends the process with ``os._exit``, after stopping the worker processes
    it started. Outputs are written to temporaries renamed when complete, so an interrupted stage
    leaves the previous outputs as they were; its next run removes the temporaries. A forked worker
    inherits the handler and exits silently (its parent says it).
    """
    main_pid = os.getpid()

    def on_sigint(signum, frame):
        if os.getpid() != main_pid:
            os._exit(INTERRUPTED_STATUS)
        _interrupted(name)

    return signal.signal(signal.SIGINT, on_sigint)


def _interrupted(name: str) -> None:
    """Stop the worker processes, say it in one line, exit with :data:`INTERRUPTED_STATUS`."""
    try:
        if "multiprocessing" in sys.modules:
            import multiprocessing

            for child in multiprocessing.active_children():
                child.terminate()
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()  # else a Ray started here would outlive the stage (os._exit runs no atexit hook)
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - in a signal handler a flush may be re-entrant; exit regardless
        pass
    # On a line of its own: a progress bar may have left the cursor at the end of its line.
    os.write(2, f"\n{name}: interrupted (Ctrl+C); stopped with exit status {INTERRUPTED_STATUS}, the outputs it "
                f"had not finished are not written\n".encode())
    os._exit(INTERRUPTED_STATUS)


@contextmanager
def h5_output(target: Path):
    """An HDF5 file written to a temporary sibling and renamed onto ``target`` when complete."""
    import h5py

    from .atomic import atomic_path

    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f


def blas_threads(limit: int | None):
    """``threadpool_limits(limit)`` on every BLAS the stages use, scipy's included.

    scipy ships its own OpenBLAS (numpy has another), loaded by the first import
    of ``scipy.linalg``; a limit set before that load does not reach it, so an
    eigendecomposition imported lazily inside a one-thread block used every core
    (measured in the methods stage: O2_W's fit ran on 2 threads beside 2 pooling
    processes). It is loaded here first. ``None``: no limit.
    """
    import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS, so that the limit reaches it)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=limit, user_api="blas")


@contextmanager
def worker_map(workers: int, initializer, initargs: tuple = (), *, executor: str = "local",
               ray_address: str | None = None, num_gpus: float = 0):
    """A ``run(fn, jobs, chunksize)`` map over ``workers`` processes that yields results in job order.

    Each worker runs ``initializer(*initargs)`` first (to open its own files: an HDF5
    handle must not cross a fork). Since results come back in job order and every job
    is independent, what a stage writes does not depend on the number of workers
    (``runtime.workers``) nor on the executor. Stages pass ``**settings.runtime.executor_options()``
    (:meth:`rdfa.settings.RuntimeSettings.executor_options`).

    ``executor="local"``: a pool of ``workers`` forked processes; with one worker (or 0)
    everything runs in this process.

    ``executor="ray"``: the jobs run as a Ray Data ``map_batches`` over actors on the Ray
    cluster at ``ray_address`` (null: a Ray started on this machine), ``workers`` of them
    (0: one per CPU of the cluster, or per ``num_gpus`` GPUs when ``num_gpus`` is set), each
    requesting one CPU or ``num_gpus`` GPUs; ``chunksize`` jobs per batch. ``initializer`` and
    ``fn`` travel together, pickled by value where their module is not installed (stage
    scripts, tests), so that both see the same class in the actor; ``Path`` and
    :class:`Paths` values in ``initargs`` are made absolute (the workers' directory differs).
    Jobs and results cross as cloudpickled bytes. An exception in a job is raised here as a
    :class:`JobError` naming the job.
    """
    if executor == "ray":
        ray_map = _RayMap(workers, initializer, initargs, ray_address, num_gpus)
        try:
            yield ray_map.run
        finally:
            ray_map.close()  # a map left unfinished (an error here) stops its dataset and actors
        return
    if executor != "local":
        raise ValueError(f"params.yaml: 'runtime.executor' must be local or ray (got {executor!r})")
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


class JobError(RuntimeError):
    """A job of :func:`worker_map` failed on a Ray worker; the message names the job and the error."""


def ray_connect(address: str | None = None):
    """The ``ray`` module, connected: to ``address`` (``runtime.ray_address``), or for None to
    ``RAY_ADDRESS`` when set, else to a Ray started here. Said in the log."""
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra cannot run the maps)
    except ImportError as err:
        raise RuntimeError(f"runtime.executor is ray but Ray Data cannot be imported ({err}): install the extra "
                           "with pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        import os

        started = address is None and not os.environ.get("RAY_ADDRESS")
        try:
            ray.init(address=address, logging_level=logging.WARNING, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise RuntimeError(f"runtime.ray_address={address!r}: cannot connect to Ray ({err}); a cluster with "
                               "token authentication (Ray's default for clusters that ray.init starts) needs "
                               "RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) in this "
                               "process's environment") from None
        resources = ray.cluster_resources()
        where = ("a Ray started on this machine" if started
                 else f"the Ray cluster at {address or os.environ['RAY_ADDRESS']}")
        try:
            gcs = ray.get_runtime_context().gcs_address
        except Exception:  # not known to a Ray Client (ray://) driver
            gcs = "Ray Client"
        log.info("ray: connected to %s (%s; %d CPUs, %d GPUs)", where, gcs, int(resources.get("CPU", 0)),
                 int(resources.get("GPU", 0)))
    return ray


def ray_gpus(address: str | None = None) -> int:
    """GPUs of the Ray cluster (connecting first, see :func:`ray_connect`)."""
    return int(ray_connect(address).cluster_resources().get("GPU", 0))


def placement(runtime: RuntimeSettings, mps: bool = True) -> tuple[str, int, int]:
    """Where a per-image stage computes: ``(device, workers, num_gpus)`` from the ``runtime`` group.

    Ray: actors of one GPU each when the cluster has GPUs (and ``runtime.device`` allows them),
    else of one CPU, ``runtime.workers`` of them (0: one per GPU or CPU of the cluster). Local:
    a GPU (``runtime.device``) in this one process, else ``runtime.workers`` processes.
    ``mps``: whether the step can run on an Apple GPU (else the CPU).
    """
    from .backbones import pick_device

    rt = runtime
    if rt.executor == "ray":
        num_gpus = 1 if rt.device not in ("cpu", "mps") and ray_gpus(rt.ray_address) else 0
        return ("cuda" if num_gpus else "cpu"), rt.workers, num_gpus
    device = rt.device if rt.device in ("cpu", "mps") else pick_device(rt.device)
    if device == "mps" and not mps:
        device = "cpu"
    return device, (1 if device != "cpu" else rt.worker_count()), 0


def _absolute(value):
    """``value`` with every ``Path`` and :class:`Paths` in it (tuples, lists, dicts) made absolute."""
    if isinstance(value, Path):
        return value.absolute()
    if isinstance(value, Paths):
        return value.absolute()
    if isinstance(value, (tuple, list)):
        return type(value)(_absolute(v) for v in value)
    if isinstance(value, dict):
        return {k: _absolute(v) for k, v in value.items()}
    return value


def _pickle_by_value(*functions) -> None:
    """Have cloudpickle carry the modules of ``functions`` by value when Ray's workers may not import
    them: not ``__main__`` (always by value), not ``rdfa`` (installed), not under site-packages."""
    import sys

    from ray import cloudpickle

    for fn in functions:
        owner = getattr(fn, "__self__", None)
        name = getattr(owner if isinstance(owner, type) else fn, "__module__", None)
        module = sys.modules.get(name or "")
        if module is None or name == "__main__" or name.split(".")[0] == "rdfa":
            continue
        where = getattr(module, "__file__", None) or ""
        if where and "site-packages" not in where and "dist-packages" not in where:
            cloudpickle.register_pickle_by_value(module)


class _RayMap:
    """The Ray side of :func:`worker_map`."""

    def __init__(self, workers: int, initializer, initargs: tuple, address: str | None, num_gpus: float):
        self.ray = ray_connect(address)
        self.workers, self.num_gpus = workers, num_gpus
        self.initializer, self.initargs = initializer, _absolute(tuple(initargs))
        self.running: list = []

    def run(self, fn, jobs, chunksize: int = 1):
        from ray import cloudpickle

        jobs = list(jobs)
        if not jobs:
            return iter(())
        _pickle_by_value(self.initializer, fn)
        # One pickle: a class that the initializer and fn share is one class in the actor.
        payload = cloudpickle.dumps((self.initializer, self.initargs, fn))
        resources = self.ray.cluster_resources()
        actors = self.workers
        if actors <= 0:
            actors = int(resources.get("GPU", 0) // self.num_gpus) if self.num_gpus else int(resources.get("CPU", 1))
        batches = -(-len(jobs) // max(1, chunksize))
        actors = max(1, min(actors, batches))
        context = self.ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results in job order, as the local executor
        context.enable_progress_bars = False  # the stages show their own
        items = [{"index": i, "job": cloudpickle.dumps(job)} for i, job in enumerate(jobs)]
        resources_per_actor = {"num_gpus": self.num_gpus} if self.num_gpus else {"num_cpus": 1}
        data = self.ray.data.from_items(items).map_batches(
            _RayWorker, fn_constructor_args=(payload,), batch_size=max(1, chunksize),
            compute=self.ray.data.ActorPoolStrategy(size=actors), batch_format="numpy", **resources_per_actor)
        log.info("ray: %d jobs on %d actor(s) of %s, %d per batch", len(jobs), actors,
                 f"{self.num_gpus:g} GPU" if self.num_gpus else "1 CPU", max(1, chunksize))
        self.running.append(_in_order(data, jobs))
        return self.running[-1]

    def close(self) -> None:
        for results in self.running:
            results.close()


def _in_order(data, jobs: list):
    """The results of the Ray ``data`` of :meth:`_RayMap.run`, in job order, unpickled; a failed job raised."""
    from ray import cloudpickle

    waiting: dict[int, bytes] = {}
    nxt = 0
    batches = data.iter_batches(batch_size=None, batch_format="numpy")
    try:
        for batch in batches:
            waiting.update(zip(batch["index"].tolist(), batch["result"]))
            while nxt in waiting:
                ok, value = cloudpickle.loads(waiting.pop(nxt))
                if not ok:
                    raise JobError(f"job {nxt} ({_short(jobs[nxt])}) failed on a Ray worker: {value[0]}\n"
                                   f"{value[1]}")
                yield value
                nxt += 1
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if nxt != len(jobs):
        raise JobError(f"ray: {len(jobs) - nxt} of {len(jobs)} jobs returned no result (first missing: job {nxt}, "
                       f"{_short(jobs[nxt])})")


def _short(job, limit: int = 200) -> str:
    text = repr(job)
    return text if len(text) <= limit else text[:limit] + "..."


class _RayWorker:
    """The actor of :class:`_RayMap`: ``initializer(*initargs)`` once, then ``fn`` on each job of a batch.

    A job's exception (or the initializer's) is returned, not raised, so that the driver
    names the job; the jobs after it in the batch are still run.
    """

    def __init__(self, payload: bytes):
        import traceback

        from ray import cloudpickle

        self.failed = None
        try:
            initializer, initargs, self.fn = cloudpickle.loads(payload)
            initializer(*initargs)
        except Exception as err:
            self.failed = (f"the worker's initializer raised {type(err).__name__}: {err}", traceback.format_exc())

    def __call__(self, batch: dict) -> dict:
        import traceback

        import numpy as np
        from ray import cloudpickle

        out = []
        for job in batch["job"]:
            if self.failed:
                out.append(cloudpickle.dumps((False, self.failed)))
                continue
            try:
                out.append(cloudpickle.dumps((True, self.fn(cloudpickle.loads(job)))))
            except Exception as err:
                out.append(cloudpickle.dumps((False, (f"{type(err).__name__}: {err}", traceback.format_exc()))))
        results = np.empty(len(out), dtype=object)
        results[:] = out
        return {"index": batch["index"], "result": results}
