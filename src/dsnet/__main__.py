"""`python -m dsnet ...` runs the `dsnet` command, so `torchrun --nproc_per_node N -m dsnet train ...` works."""

import sys

from dsnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
