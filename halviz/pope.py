"""Entry point: ``python -m halviz.pope score|build …`` (see :mod:`halviz.evaluation.pope_cli`)."""

import sys

from halviz.evaluation.pope_cli import main

if __name__ == "__main__":
    sys.exit(main())
