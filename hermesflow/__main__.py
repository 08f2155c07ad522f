"""`python -m hermesflow` is the `hermesflow` command (so `accelerate launch -m hermesflow` works)."""

import sys

from hermesflow.cli import main

sys.exit(main())
