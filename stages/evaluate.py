"""Evaluate ranked lists against a dataset's ground truth (mAP, mP@k).

Contract mode prints the metrics as JSON on stdout::

    python stages/evaluate.py --gnd data/<ds>/gnd.json --ranks ranks.json [--protocol original|revisited]

Stage mode (``--out``) writes, atomically::

    python stages/evaluate.py --gnd data/<ds>/gnd.json --ranks features/<ds>/ranks.json \
        --ranks-qe features/<ds>/ranks_qe.json --out metrics/<ds>.json \
        [--methods features/<ds>/methods.json --methods-out metrics/<ds>_methods.json] \
        [--results results/<ds>.json] [--per-query-out features/<ds>/per_query_ap.json] \
        [--info features/<ds>/search_info.json]

* ``--out``: the headline metrics, numbers only (DVC metrics): ``mAP``,
  ``mAP_qe``, ``n_images``, ``n_queries``, ``n_scored`` (queries with at least
  one positive), and for the revisited protocol ``easy``/``medium``/``hard``
  with ``mAP``, ``mAP_qe`` and ``mP@k`` for each k (``mAP`` is Medium);
* ``--methods-out``: the method comparison of ``stages/methods.py`` (Table 1 /
  Figure 1) as numbers only, ``{"methods": {name: {D: {"mAP", "mAP_qe"}}}}``,
  null where a cell cannot be computed;
* ``--results``: everything, the explanations included: the headline, the
  protocol, the revisited QE mP@k, ``--info`` as ``info``, the method cells
  with their reasons and warnings as ``methods`` and the methods stage's
  ``info`` as ``methods_info``. Not a DVC metric: the table stage reads it;
* ``--per-query-out``: one AP record per query, for DVC plots;
* ``--distractors``: the distractor shards' ``index.json`` (stage
  ``evaluate_distractors``): the ranked lists index the database's images
  followed by that many distractors, ``n_images`` counts them and
  ``n_distractors`` says how many.

A dataset without queries (a training set) is accepted in stage mode only:
its ranked lists are empty, ``mAP`` and ``mAP_qe`` null with ``n_queries``
0 (no number made up), the per-query records empty, and the results file
says so (``note``, ``protocol`` null).

Strings (warnings, reasons, names) never go into a metrics file: DVC's
``metrics show``/``diff`` and ``exp show`` make a column of every field.

All inputs are checked before anything is written; bad input exits non-zero
with a message naming the file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rdfa.io.atomic import InputFileError, remove_stale_temporaries
from rdfa.io.evaluation import evaluate_files
from rdfa.io.gnd import NO_QUERIES, DatasetError
from rdfa.metrics import PROTOCOLS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gnd", required=True, help="canonical gnd.json")
    parser.add_argument("--ranks", required=True, help="ranks.json: per query, ranked database indices")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="default: revisited when gnd entries have 'easy', else original")
    parser.add_argument("--ranks-qe", help="ranks after query expansion (stage mode)")
    parser.add_argument("--out", help="headline metrics JSON to write, numbers only (turns on stage mode)")
    parser.add_argument("--per-query-out", help="per-query AP records for DVC plots (stage mode)")
    parser.add_argument("--info", help="JSON object stored in the --results file under 'info' (stage mode)")
    parser.add_argument("--methods", help="methods.json of stages/methods.py (stage mode)")
    parser.add_argument("--methods-out", help="its numbers as a metrics JSON: {methods: {name: {D: {mAP, mAP_qe}}}}")
    parser.add_argument("--distractors", help="the distractor shards' index.json: the ranked lists index the "
                        "database's images, then its distractors (stage mode)")
    parser.add_argument("--results", help="results JSON: the headline metrics with every explanation (protocol, "
                        "info, method cells with their reasons and warnings); what the table stage reads")
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> int:
    """Run from the command line; return the exit status (2 on bad input)."""
    args = parse_args(argv)
    if args.out is not None:  # stage mode: what an interrupted run left beside the outputs
        outputs = [args.out, args.per_query_out, args.methods_out, args.results]
        for path in remove_stale_temporaries([p for p in outputs if p]):
            print(f"evaluate: removed {path}, left by an interrupted run", file=sys.stderr)
    try:
        result = evaluate_files(args.gnd, args.ranks, args.protocol, args.ranks_qe, args.out,
                                args.per_query_out, args.info, args.methods, args.methods_out, args.results,
                                args.distractors)
    except (DatasetError, InputFileError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    elif result["n_queries"] == 0:
        gnd = Path(args.gnd)
        print(f"evaluate: {(gnd if gnd.is_dir() else gnd.parent).name}: {NO_QUERIES}: no mAP, "
              f"{args.out} says n_queries 0", file=sys.stderr)
    else:
        print(f"evaluate: {args.out}: mAP {result['mAP']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
