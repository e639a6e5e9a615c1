"""``python -m kn_sock``."""

import sys

from .cli import main

sys.exit(main())
