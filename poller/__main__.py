"""`python -m poller` is the `poller` command."""

import sys

from poller.cli import main

sys.exit(main())
