"""`python -m c8ysim` runs the same CLI as the `c8ysim` console script."""

import sys

from c8ysim.main import main

sys.exit(main())
