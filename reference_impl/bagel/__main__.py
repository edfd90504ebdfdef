"""Entry point of ``python -m reference_impl.bagel``."""

import sys

from .cli import main

sys.exit(main())
