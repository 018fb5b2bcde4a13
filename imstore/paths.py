"""Default per-user folders for the store, the cache and the remote CLI's state.

On Linux these are the XDG folders, computed here exactly as platformdirs does;
importing platformdirs costs ~13 ms, a tenth of `imstore get`'s start-up.
Other systems ask platformdirs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["user_data_path", "user_cache_path", "user_state_path"]


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable, "").strip()
    return Path(value) if value else Path(os.path.expanduser(fallback))


def user_data_path(app: str = "imstore") -> Path:
    if sys.platform.startswith("linux"):
        return _xdg("XDG_DATA_HOME", "~/.local/share") / app
    from platformdirs import user_data_path as platform_data_path

    return platform_data_path(app)


def user_cache_path(app: str = "imstore") -> Path:
    if sys.platform.startswith("linux"):
        return _xdg("XDG_CACHE_HOME", "~/.cache") / app
    from platformdirs import user_cache_path as platform_cache_path

    return platform_cache_path(app)


def user_state_path(app: str = "imstore") -> Path:
    """Where the remote CLI keeps what it must remember between runs (each server's last checkpoint)."""
    if sys.platform.startswith("linux"):
        return _xdg("XDG_STATE_HOME", "~/.local/state") / app
    from platformdirs import user_state_path as platform_state_path

    return platform_state_path(app)
