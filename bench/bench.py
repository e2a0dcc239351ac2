"""Run the benchmark suite by hand: the same as ``adaptune bench`` (see ``adaptune bench --help``).

.venv/bin/python bench/bench.py --adapters-python .venv-adapters/bin/python
make bench            # sets up both venvs first
"""

import sys

from adaptune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
