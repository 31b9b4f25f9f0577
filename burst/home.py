"""Where burst keeps its files on this machine: $BURST_HOME, by default ~/.burst.

It holds the sandbox's keys and the index of jobs: only its owner may enter it (0700), and its
files are readable by their owner alone (0600).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def burst_home() -> Path:
    return Path(os.environ.get("BURST_HOME", Path.home() / ".burst"))


def ensure_home() -> Path:
    """$BURST_HOME, created (or tightened) to mode 0700."""
    home = burst_home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if home.stat().st_mode & 0o077:
        home.chmod(0o700)  # made by an older burst, or by hand with the umask's mode
    return home


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner alone (0600), atomically: a reader sees
    the old file or the whole new one, never a half-written or a world-readable one."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
