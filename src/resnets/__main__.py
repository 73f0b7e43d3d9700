"""``python -m resnets`` (and ``torchrun -m resnets``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
