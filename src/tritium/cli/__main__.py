"""``python -m tritium.cli``."""

import sys

from . import main

sys.exit(main())
