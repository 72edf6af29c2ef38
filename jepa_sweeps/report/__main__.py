"""``python -m jepa_sweeps.report``: see ``jepa_sweeps.report``."""

import sys

from jepa_sweeps.report.cli import main

sys.exit(main())
