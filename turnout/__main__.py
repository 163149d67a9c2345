"""`python -m turnout` is the `turnout` command."""

import sys

from turnout.cli import main

sys.exit(main())
