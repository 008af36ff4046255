"""`python -m asset_watcher` is the same as the `asset-watcher` console script."""

import sys

from asset_watcher.cli import main

sys.exit(main())
