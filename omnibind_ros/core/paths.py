"""Where omnibind_ros keeps generated data (data sets, previews, bundles): the cache directory.

Pure standard library, so every layer (core, sim, training, ros) can resolve it the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that overrides the cache directory for every omnibind_ros tool.
CACHE_ENV = "OMNIBIND_CACHE_DIR"


def default_cache_dir() -> Path:
    """Return the cache directory (not created).

    Resolution order: ``$OMNIBIND_CACHE_DIR``, then ``$XDG_CACHE_HOME/omnibind_ros``, then
    ``~/.cache/omnibind_ros``. Empty variables count as unset (XDG base-directory rule).

    Returns
    -------
    Path
        Absolute, user-expanded path.
    """
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "omnibind_ros").absolute()
