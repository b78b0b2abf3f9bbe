"""``python -m unified_map``: the ``unified-map`` command; with no arguments it runs the
built-in benchmark suite on every installed backend."""

import sys

from unified_map.cli import main

if __name__ == "__main__":
    sys.exit(main())
