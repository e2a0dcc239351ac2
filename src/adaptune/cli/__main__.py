"""``python -m adaptune.cli``: what torchrun and accelerate launch run on every process."""

import sys

from . import main

sys.exit(main())
