"""``python -m scripts.soaklib``: see :mod:`scripts.soaklib.run`."""

import sys

from scripts.soaklib.run import main

sys.exit(main())
