"""``python -m apx.dataplane.ratelimit``: the same as the ``apx-ratelimit`` console script."""

import sys

from .main import main

sys.exit(main())
