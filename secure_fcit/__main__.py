"""``python -m secure_fcit`` → :func:`secure_fcit.cli.main`."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
