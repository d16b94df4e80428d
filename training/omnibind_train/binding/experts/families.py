"""Imports every expert family module so each registers its kind and named configs.

Each family lives in its own module (``open_clip_expert``, ``clap``, ``uni3d``, ``imagebind``);
add a line here when adding one.
"""
from __future__ import annotations

import importlib

FAMILY_MODULES = ("open_clip_expert", "clap", "uni3d", "imagebind")

for _name in FAMILY_MODULES:
    try:
        importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as exc:  # a family being written; never hide a broken import
        if exc.name != f"{__package__}.{_name}":
            raise
