"""``python -m dcd_ext.train`` and the ``dcd-train`` console script: user errors as one line on stderr (exit
status 2; the run's log.txt keeps the traceback), while ``dcd_ext.train.main(argv)`` raises them."""

import sys
from typing import Optional, Sequence

from ..cli import run_command_line
from .cli import main as train_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command_line(train_main, argv)


if __name__ == "__main__":
    sys.exit(main())
