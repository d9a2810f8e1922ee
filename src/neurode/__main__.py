"""``python -m neurode ...`` (and ``torchrun -m neurode ...``): the ``neurode`` command."""

import sys

from neurode.experiments.cli import main

sys.exit(main())
