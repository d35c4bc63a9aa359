#!/usr/bin/env python3
"""Stage `data`: produce ``data/<dataset>/`` in the canonical layout (images/ + gnd.json).

``synth`` is generated from scikit-image's bundled photos (``data.synth``
parameters); every other dataset comes from ``sources.<dataset>``: the
string ``download`` (the official archives), or a local archive or folder.
The folder is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import logging
import sys

from rdfa.io.params import ParamError, get
from rdfa.io.stage import run_stage

log = logging.getLogger("rdfa.data")


def main(dataset: str, params: dict, paths) -> None:
    options = dict(get(params, f"data.{dataset}", {}) or {})
    source = get(params, f"sources.{dataset}", None)
    if dataset == "synth":
        from rdfa.io.synth import make_synth

        gnd = make_synth(paths.data, **options)
    else:
        from rdfa.io.datasets import prepare_dataset

        if source is None:
            raise ParamError(f"params.yaml: no 'sources.{dataset}': say where dataset '{dataset}' comes from "
                             "('download', or the path of a local archive or folder)")
        gnd = prepare_dataset(dataset, source, paths.data, options)
    log.info("%s: %d database images, %d queries in %s", dataset, len(gnd["imlist"]), len(gnd["qimlist"]), paths.data)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.data]))
