"""Every dataset's ``results/<ds>.json`` read back, for Table 1 (``rdfa.table`` renders it).

The results files (``stages/evaluate.py --results``), not the DVC metrics, which
hold numbers only: they carry the reasons, the warnings and which database
learned the whitening. Datasets whose whitening was learned on a training set
record the digest of the descriptors it was learned on, and
:func:`check_training_sets` refuses results whose digest is not the training
set's as it is now: DVC re-runs a training set's stages when it changes, not
those of the datasets that learn on it (``whitening.train_on`` crosses
datasets), and the table, which reads every dataset's results, is where that shows.
"""
from __future__ import annotations

from pathlib import Path

from .atomic import InputFileError, read_json
from .provenance import stale_whitening


class TableError(InputFileError):
    """A results file is missing, malformed or stale; the message names it."""


def load_results(results_dir: str | Path, datasets: list[str]) -> dict[str, dict]:
    """``results/<ds>.json`` of every dataset, in order; ``TableError`` naming a bad one."""
    out = {}
    for ds in datasets:
        path = Path(results_dir) / f"{ds}.json"
        try:
            results = read_json(path, "results", f" (run the pipeline on {ds})")
        except InputFileError as err:
            raise TableError(str(err)) from None
        if not isinstance(results, dict) or not isinstance(results.get("methods", {}), dict):
            raise TableError(f"{path}: expected an object with a 'methods' object")
        out[ds] = results
    return out


def check_training_sets(results: dict[str, dict], results_dir: str | Path) -> None:
    """Refuse when a dataset's whitening was learned on another's descriptors as they no longer are.

    ``info.whitening_train_digest`` (the ranking stage's search_info) is the digest of the
    descriptors a whitening was learned on; a training set learns on itself, so its own is that of
    its descriptors now. Results without it (older runs) are not checked.
    """
    for ds, m in results.items():
        info = m.get("info") or {}
        source = info.get("whitening_learned_on")
        if source in (None, ds) or source not in results:
            continue
        mine, theirs = info.get("whitening_train_digest"), (results[source].get("info") or {}).get(
            "whitening_train_digest")
        if mine and theirs and mine != theirs:
            raise TableError(stale_whitening(Path(results_dir) / f"{ds}.json", ds, source, mine, theirs,
                                             Path(results_dir) / f"{source}.json"))
