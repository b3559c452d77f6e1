"""``python -m autoscaler.cli``: the same as the ``autoscaler`` console script."""

from __future__ import annotations

import sys

from autoscaler.cli.main import main

sys.exit(main())
