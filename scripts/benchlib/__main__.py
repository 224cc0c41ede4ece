"""``python -m scripts.benchlib``: see :mod:`scripts.benchlib.run`."""

import sys

from scripts.benchlib.run import main

sys.exit(main())
