"""`python -m lpdet ...` runs the `lpdet` command (what `torchrun -m lpdet train ...` needs)."""

import sys

from lpdet.cli import main

sys.exit(main())
