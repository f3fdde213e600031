"""``python -m halviz`` is the ``halviz`` command."""

import sys

from halviz.cli import main

sys.exit(main())
