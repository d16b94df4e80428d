"""Real pre-trained spaces in their published checkpoint layouts (see :mod:`.common`)."""
from __future__ import annotations

from .common import (
    ExpertConfig,
    ExpertSpace,
    Inputs,
    build_expert,
    check_state_keys,
    expert_kinds,
    get_expert_config,
    list_experts,
    register_expert,
    register_expert_kind,
)

__all__ = ["ExpertConfig", "ExpertSpace", "Inputs", "build_expert", "check_state_keys",
           "expert_kinds", "get_expert_config", "list_experts", "register_expert",
           "register_expert_kind"]
