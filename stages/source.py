#!/usr/bin/env python3
"""Stage `source`: write ``data/<dataset>.source.json``, a digest of what ``sources.<dataset>`` names.

Run by DVC every time (``always_changed``) and cheap (stat-based, see
:mod:`rdfa.io.sourcedigest`); the data stage depends on the file, so a change
inside an external source folder (an image replaced in place) re-runs it, and
an unchanged folder re-runs nothing.
"""
from __future__ import annotations

import sys

from rdfa.io.sourcedigest import write_digest
from rdfa.io.stage import run_stage


def main(dataset: str, settings, paths) -> None:
    write_digest(dataset, settings.sources.get(dataset), paths.data.parent)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0]))
