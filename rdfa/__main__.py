"""``python -m rdfa``: the same as the ``rdfa`` command (see ``rdfa.cli``)."""
import sys

from .cli import main

sys.exit(main())
