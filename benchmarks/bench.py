"""The mamabear as a user runs it, the mamabear through the scheduler and the whole circuit, side by side: a thin
script over :mod:`circuit.bench` (which ships in the package, for ``babybear bench``); see its docstring."""

import sys

from circuit.bench import main

if __name__ == "__main__":
    sys.exit(main())
