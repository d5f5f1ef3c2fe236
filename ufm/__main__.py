"""``python -m ufm ...``: the same program as the ``ufm`` console script, exit status included."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
