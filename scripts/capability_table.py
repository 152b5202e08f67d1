"""Rewrites the README's combination table from the C++ capability table.

    PYTHONPATH=python /usr/bin/python3 scripts/capability_table.py          # rewrite README.md
    PYTHONPATH=python /usr/bin/python3 scripts/capability_table.py --check  # exit 1 when stale
"""
import pathlib
import sys

from lowbit import capabilities

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def main():
    text = README.read_text()
    start, end = text.index(capabilities.BEGIN), text.index(capabilities.END) + len(capabilities.END)
    fresh = text[:start] + capabilities.readme_block() + text[end:]
    if "--check" in sys.argv:
        if fresh != text:
            sys.exit("README.md: the capability table is stale; run scripts/capability_table.py")
        return
    README.write_text(fresh)


if __name__ == "__main__":
    main()
