"""``python -m cdp`` runs the command-line interface."""

import sys

from cdp.cli.main import main

sys.exit(main())
