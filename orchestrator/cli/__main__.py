"""`python -m orchestrator.cli`: the same as the `ftctl` console script."""

import sys

from orchestrator.cli import main

sys.exit(main())
