"""``python -m haste_core.cli VERB ...``: the ``haste`` command without the console script."""

import sys

from haste_core.cli import main

sys.exit(main())
