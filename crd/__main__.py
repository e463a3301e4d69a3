"""``python -m crd`` runs the command line."""

import sys

from crd.cli import main

sys.exit(main())
