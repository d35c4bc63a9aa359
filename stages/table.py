#!/usr/bin/env python3
"""Stage `table`: Table 1 of the paper, ours beside the published numbers, from every results/<ds>.json.

Rows are the methods at each D, in the order the results list them (the
methods stage's: Table 1's, then those a user registered in ``plugins/``;
regional methods as ``128M``: D per region, as the paper writes it), then the
same with query expansion; columns are the datasets of ``datasets:`` in params.yaml, then each
with its distractor set (``<ds>+<set>``, ``distractors:``: the grid with distractors), each
followed by its uncropped-query column (``<ds> full``, Table 1's "OF") when
the results have ``<method>_full`` cells, and by the paper's column for
Oxford5k, Paris6k and Holidays. The paper's columns of datasets not run are
appended, so its Table 1 is always there to compare with. ``n/a`` marks a D
that the whitening cannot be learned at (reason listed under the table), ``†``
a cell whose whitening was flagged as poorly conditioned, ``—`` nothing.

It reads the results files of ``stages/evaluate.py --results`` (not the DVC
metrics, which hold numbers only): they carry the reasons, the warnings and
which database learned the whitening. A dataset without queries (a training
set, ``n_queries`` 0) gets no column, only a line under the table naming
the datasets whose whitening it learns. Those datasets' results record the
digest of the descriptors their whitening was learned on, and the table is
refused when it is not the training set's as it is now: DVC re-runs a
training set's stages when it changes, not those of the datasets that
learn on it (``whitening.train_on`` crosses datasets), and this stage, which
reads every dataset's results, is where that shows.

    python stages/table.py [--params params.yaml] [--results-dir results] [--out reports/table.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rdfa.io.atomic import atomic_path, remove_stale_temporaries
from rdfa.io.results import TableError, check_training_sets, load_results
from rdfa.settings import ParamError, load_settings
from rdfa.table import render_table


def main(params_path: str | Path = "params.yaml", results_dir: str | Path = "results",
         out: str | Path = "reports/table.md") -> str:
    """Write Table 1 of the datasets of ``params_path`` to ``out``; return its text."""
    settings = load_settings(params_path)
    datasets = list(settings.datasets)
    if not datasets:
        raise ParamError(f"{params_path}: 'datasets' must be a non-empty list of names")
    # Then each dataset with its distractor set (results/<ds>+<set>.json: the grid with distractors).
    pairs = [f"{ds}+{extra}" for ds, extra in settings.distractors.items() if ds in datasets]
    results = load_results(results_dir, datasets + pairs)
    check_training_sets(results, results_dir)
    text = render_table(results)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    return text


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file naming the datasets")
    parser.add_argument("--results-dir", default="results", help="folder of the <dataset>.json results "
                        "(stages/evaluate.py --results)")
    parser.add_argument("--out", default="reports/table.md", help="Markdown table to write")
    args = parser.parse_args(argv)
    for path in remove_stale_temporaries([args.out]):  # left by an interrupted run
        print(f"table: removed {path}, left by an interrupted run", file=sys.stderr)
    try:
        main(args.params, args.results_dir, args.out)
    except (TableError, ParamError, OSError) as err:
        print(f"table: error: {err}", file=sys.stderr)
        return 2
    print(f"table: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
