"""What a whitening learned on another dataset was learned from, and the check that it still is.

``whitening.train_on`` lets a dataset learn its K -> K' basis (eq. 4) and its
whitening (eq. 6) on another dataset's database. A foreach stage of DVC
cannot declare that other dataset's files as dependencies, so DVC does not
re-run anything when they change. Instead each file records a digest of
what it was learned from, and every reader compares it with the training
set's files as they are now, refusing (naming both datasets) when they
differ, rather than searching with a stale whitening.

:func:`load_whitening` reads the transform and mode of ``whitened.h5``;
:func:`check_training_source` is the readers' check.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np

from ..whitening import PCA, Whitening, whitened

#: Rows hashed per read of an HDF5 dataset.
DIGEST_ROWS = 8192


def array_digest(data, chunk_rows: int = DIGEST_ROWS) -> str:
    """sha256 of an array's shape, dtype and values (row blocks of an HDF5 dataset or a NumPy array)."""
    digester = Digester()
    for start in range(0, max(len(data), 1), chunk_rows):
        digester.add(np.asarray(data[start:start + chunk_rows]))
    return digester.hexdigest()


class Digester:
    """:func:`array_digest` of rows that arrive block by block (as the descriptors stage writes them)."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.shape: tuple | None = None
        self.dtype = None

    def add(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows)
        if self.shape is None:
            self.shape, self.dtype = (0,) + rows.shape[1:], rows.dtype
        self.shape = (self.shape[0] + len(rows),) + self.shape[1:]
        self.h.update(rows.tobytes())

    def hexdigest(self) -> str:
        shape, dtype = (self.shape, np.dtype(self.dtype).str) if self.shape is not None else ((0,), "none")
        head = hashlib.sha256(f"{tuple(shape)}|{dtype}|".encode())
        # The header is only known at the end: hash it with the digest of the values.
        head.update(self.h.digest())
        return head.hexdigest()


def stored_digest(path: Path, key: str, attr: str) -> str:
    """The digest ``attr`` that ``path`` records for its dataset ``key``; computed when it records none."""
    with h5py.File(path, "r") as f:
        if attr in f.attrs:
            return str(f.attrs[attr])
        if key not in f:
            raise ValueError(f"{path}: no entry '{key}'")
        return array_digest(f[key])


def require_training_files(dataset: str, source: str, *needed: Path) -> None:
    """Refuse, naming both datasets, when a file of the training set ``source`` is missing."""
    for path in needed:
        if not Path(path).is_file():
            raise ValueError(f"whitening.train_on.{dataset}={source}: {path} not found "
                             f"(run the pipeline on {source} first: it must be in 'datasets')")


def stale_whitening(where: Path, dataset: str, source: str, recorded: str, now: str, changed: Path) -> str:
    """The refusal of a whitening that ``dataset`` learned on ``source``'s descriptors as they no longer are."""
    return (f"{where}: {dataset}'s whitening was learned on {source}'s descriptors as they were (digest "
            f"{recorded[:12]}), but {source}'s have changed since (digest {now[:12]}, {changed}); DVC cannot see this "
            f"(whitening.train_on crosses datasets): re-run {dataset} from its pca stage, e.g. "
            f"`dvc repro -s -f pca@{dataset} && dvc repro`")


def write_whitened_groups(out, descriptors, pca: PCA | None, setting: Whitening, dim: int, chunk_rows: int,
                          progress=None) -> None:
    """``whitened.h5``'s groups into the open file ``out``: the ``db``, ``query`` and ``full`` rows of the
    open ``descriptors.h5`` whitened (eq. 6, ``chunk_rows`` at a time), their offsets, ``query/all_regions``
    and the transform (``transform/*``, what :func:`load_whitening` reads); ``progress(iterable, desc)``
    wraps each group's blocks (a tqdm)."""
    for group in ("db", "query", "full"):
        rows = descriptors[f"{group}/desc"]
        target = out.create_dataset(f"{group}/desc", shape=(len(rows), dim), dtype=np.float32)
        blocks = range(0, len(rows), chunk_rows)
        for start in (progress(blocks, group) if progress else blocks):
            target[start:start + chunk_rows] = whitened(rows[start:start + chunk_rows], pca, setting)
        out.create_dataset(f"{group}/offsets", data=descriptors[f"{group}/offsets"][()])
    out.create_dataset("query/all_regions", data=descriptors["query/all_regions"][()])
    if pca is not None:
        for name in ("mean", "components", "eigenvalues", "total_variance"):
            out.create_dataset(f"transform/{name}", data=getattr(pca, name))
    out.attrs["D"] = dim
    out.attrs["mode"], out.attrs["shrink"], out.attrs["power"] = setting.mode, setting.shrink, setting.power


def load_whitening(path) -> tuple[PCA | None, Whitening]:
    """The transform and the mode ``whitened.h5`` was written with (what ``rdfa search`` applies)."""
    with h5py.File(path, "r") as f:
        setting = Whitening(str(f.attrs.get("mode", "pca")), float(f.attrs.get("shrink", 1.0)),
                            float(f.attrs.get("power", 0.5)))
        if setting.mode == "none":
            return None, setting
        if "transform" not in f:
            raise ValueError(f"{path}: no whitening transform (written by an older version); "
                             "re-run the whitening stage")
        total = f["transform/total_variance"][()] if "transform/total_variance" in f else float("nan")
        pca = PCA(*(f[f"transform/{name}"][()] for name in ("mean", "components", "eigenvalues")),
                  total_variance=float(total))
    return pca, setting


def check_training_source(paths, dataset: str) -> None:
    """Refuse ``whitened.h5`` when it was learned on another dataset's descriptors as they no longer are."""
    with h5py.File(paths.whitened, "r") as f:
        source = str(f.attrs.get("learned_on", dataset))
        recorded = str(f.attrs.get("train_digest", ""))
    if source == dataset:
        return
    origin = type(paths)(paths.root, source).descriptors  # the training set's (rdfa.io.stage.Paths)
    require_training_files(dataset, source, origin)
    now = stored_digest(origin, "db/desc", "db_digest")
    if recorded != now:
        raise ValueError(stale_whitening(paths.whitened, dataset, source, recorded, now, origin))


def check_same_basis(dataset: str, source: str, ours: Path, theirs: Path) -> None:
    """Refuse when ``dataset``'s descriptors (``ours``) and ``source``'s (``theirs``) were computed with
    different K -> K' bases (``whitening.train_on``: the pca stage learns the basis on the training set)."""
    require_training_files(dataset, source, theirs)
    with h5py.File(ours, "r") as a, h5py.File(theirs, "r") as b:
        mine, other = a.attrs.get("pca_digest"), b.attrs.get("pca_digest")
    if mine is None or other is None or mine != other:
        raise ValueError(f"{ours} and {theirs}: {dataset}'s descriptors were not computed with {source}'s "
                         f"K -> K' basis as it is now (whitening.train_on.{dataset}={source}); re-run {dataset} "
                         f"from its pca stage: `dvc repro -s -f pca@{dataset} && dvc repro`")
