"""``$JEPA_SWEEPS_HOME`` (default ``~/.jepa_sweeps``): a machine's default storage, tracking store,
reports and data cache. A leaf module: the data loaders use it in every worker."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("JEPA_SWEEPS_HOME", "~/.jepa_sweeps")).expanduser().resolve()
