"""``python -m apx.dataplane.worker``: the same as the ``apx-worker`` console script."""

import sys

from .main import main

sys.exit(main())
