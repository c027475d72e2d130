"""``python -m tlc.cli ARGS``: the ``tlc`` command."""
import sys

from . import main

sys.exit(main())
