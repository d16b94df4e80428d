"""Where omnibind_ros keeps generated data (data sets, previews, bundles): the cache directory.

Pure standard library, so every layer (core, sim, training, ros) can resolve it the same way.
"""
from __future__ import annotations

import os
import sys
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


def config_file(name: str) -> Path:
    """``config/<name>`` of the package: the source tree first, then the installed share
    directories (``$AMENT_PREFIX_PATH/share/omnibind_ros/config``, then ``sys.prefix``'s).

    Returns the source tree's path when none exists, so an error names the expected place.
    """
    candidates = [Path(__file__).resolve().parents[2] / "config" / name]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates += [Path(p) / "share" / "omnibind_ros" / "config" / name
                   for p in [*prefixes, sys.prefix]]
    return next((c for c in candidates if c.is_file()), candidates[0])
