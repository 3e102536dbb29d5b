"""``python -m uniformer.cli``: the ``uniformer`` command (also under ``torchrun ... -m uniformer.cli``)."""
import sys

from . import main

sys.exit(main())
