"""``python -m jetlane``: the same as the ``jetlane`` command."""

import sys

from .cli import main

sys.exit(main())
