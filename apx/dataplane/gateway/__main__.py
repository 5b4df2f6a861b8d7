"""``python -m apx.dataplane.gateway``: the same as the ``apx-gateway`` console script."""

import sys

from .main import main

sys.exit(main())
