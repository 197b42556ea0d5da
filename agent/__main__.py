"""`python -m agent` is the `refinery` command."""

import sys

from agent.cli import main

sys.exit(main())
