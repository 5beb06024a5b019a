"""`python -m workbench ...`: the headless CLI (see workbench/cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
