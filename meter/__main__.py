"""`python -m meter`: the same CLI as the `meter` console script."""

import sys

from meter.cli import main

sys.exit(main())
