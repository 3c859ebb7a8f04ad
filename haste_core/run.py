"""Train from a recipe: ``[torchrun ...] -m haste_core.run RECIPE [key.path=value ...] [--check]``.

The same program as ``haste run`` (``haste_core.cli.run``), kept under this name because every recipe header and
launcher script uses it.
"""

import sys

from haste_core.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
