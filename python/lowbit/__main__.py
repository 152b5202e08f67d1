"""``python3 -m lowbit``: the lowbit command (lowbit.cli)."""
import sys

from lowbit.cli import main

if __name__ == "__main__":
    sys.exit(main())
