"""The mamabear as a user runs it, the mamabear through the scheduler and the whole circuit, side by side: a thin
script over :mod:`babybear.doors.bench` (which ships in the package, for ``babybear bench``); see its docstring."""

import sys

from babybear.doors.bench import main

if __name__ == "__main__":
    sys.exit(main())
