"""``python -m kn_sock``: the command line of :mod:`kn_sock.cli` (exit codes documented there)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
