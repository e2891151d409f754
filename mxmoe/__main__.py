"""``python -m mxmoe`` (see mxmoe.cli)."""
import sys

from .cli import main

sys.exit(main())
