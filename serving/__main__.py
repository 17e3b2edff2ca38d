"""``python -m serving``: the same as the ``qwthn-serve`` command."""

import sys

from serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
