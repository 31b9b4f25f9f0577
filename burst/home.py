"""Where burst keeps its files on this machine: $BURST_HOME, by default ~/.burst."""

from __future__ import annotations

import os
from pathlib import Path


def burst_home() -> Path:
    return Path(os.environ.get("BURST_HOME", Path.home() / ".burst"))
