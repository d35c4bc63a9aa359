#!/usr/bin/env python3
"""Stage `data`: produce ``data/<dataset>/`` in the canonical layout (images/ + gnd.json).

``synth`` is generated from scikit-image's bundled photos (``data.synth``
parameters), and so is its training split ``synth_train`` (``data.synth_train``:
database images only, to learn the whitening off the test set); every other
dataset comes from ``sources.<dataset>``: the string ``download`` (the
official archives), or a local archive or folder.
The folder is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import logging
import sys

from rdfa.io.stage import run_stage
from rdfa.settings import ParamError

log = logging.getLogger("rdfa.data")


def _warn_if_other_test_split(settings, options: dict) -> None:
    """Warn when ``data.synth_train.test`` does not name the split ``data.synth`` generates.

    The training split keeps out the query objects of the test split its
    ``test`` option names; DVC declares only ``data.synth_train`` for it, so
    the two blocks are kept in step by hand and a mismatch would let synth's
    query objects into the training images.
    """
    from rdfa.io.synth import TEST_DEFAULTS

    synth = settings.data_options("synth")
    expected = {key: synth.get(key, default) for key, default in TEST_DEFAULTS.items()}
    named = {**TEST_DEFAULTS, **(options.get("test") or {})}
    if named != expected:
        log.warning("data.synth_train.test is %s but data.synth generates %s: the training split keeps out "
                    "the query objects of another test split than synth's", named, expected)


def main(dataset: str, settings, paths) -> None:
    options = dict(settings.data_options(dataset))
    odd = [key for key in options if not isinstance(key, str)]
    if odd:  # would be a TypeError as keywords
        raise ParamError(f"params.yaml: 'data.{dataset}' has key {odd[0]!r}, not an option name")
    if dataset == "synth":
        from rdfa.io.synth import make_synth

        gnd = make_synth(paths.data, **options)
    elif dataset == "synth_train":
        from rdfa.io.synth import make_synth_train

        gnd = make_synth_train(paths.data, **options)
        _warn_if_other_test_split(settings, options)
    else:
        from rdfa.io.datasets import prepare_dataset

        gnd = prepare_dataset(dataset, settings.source(dataset), paths.data, options)
    log.info("%s: %d database images, %d queries in %s", dataset, len(gnd["imlist"]), len(gnd["qimlist"]), paths.data)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.data]))
