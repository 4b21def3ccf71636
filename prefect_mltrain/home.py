"""Machine-local state: caches, run scratch folders and the embedded Prefect server.

Everything lives under ``$MLTRAIN_HOME`` (default ``~/.mltrain``); nothing here is the
system of record (that is the workspace), so the folder can be deleted at any time.
"""

from __future__ import annotations

import os
from pathlib import Path


def mltrain_home() -> Path:
    home = Path(os.environ.get("MLTRAIN_HOME") or Path.home() / ".mltrain")
    home.mkdir(parents=True, exist_ok=True)
    return home


def cache_dir(*parts: str) -> Path:
    path = mltrain_home().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
