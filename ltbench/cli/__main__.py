"""``python -m ltbench.cli``: the same command line as ``ltbench``."""

import sys

from . import main

sys.exit(main())
