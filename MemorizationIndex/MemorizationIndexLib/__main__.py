"""`python -m MemorizationIndexLib` is the same as the `memorization-index` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
