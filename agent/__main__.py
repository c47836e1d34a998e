"""`python -m agent` runs the same CLI as the `c8ysim` console script."""

import sys

from agent.main import main

sys.exit(main())
