"""Physically motivated sensor degradations: a sensor that still publishes, but badly.

A blinded camera, a microphone in the wind or a LiDAR in the rain keeps publishing messages of
the right type, so a consumer that only watches arrival (hot-plug) sees nothing wrong. These
functions turn a clean payload of the simulated world into such a degraded one, per sample, with
a severity in [0, 1]:

===========  ==================================================================================
modality     kinds (module)
===========  ==================================================================================
image        dark, glare, motion_blur, occlusion, lens_dirt (``camera``)
thermal      hot_saturation, reflection, nuc_drift (``thermal``)
event        flicker, hot_pixels, no_motion (``event``)
tactile      partial_contact, no_contact, slip (``tactile``)
audio        wind, clipping, dropout (``audio``)
point_cloud  rain, occlusion, sparse (``lidar``)
===========  ==================================================================================

:data:`DEGRADATIONS` maps modality -> {kind -> ``function(payload, severity, rng, **context)``};
:func:`apply` looks one up. Every function is deterministic given ``rng``, returns its input
unchanged at severity 0, and keeps the payload's type, dtype and encoding, so the runtime's
preprocessing accepts the result. :mod:`.spec` draws degradations for samples of the world
(probability, kinds and severity range per modality) and records what was applied.

This package is a directory on purpose: the data-set code fingerprint hashes the simulator's
top-level modules, and a clean data set does not depend on this code (a degraded one adds its
own fingerprint, see :func:`omnibind_ros.sim.dataset.rendering.code_fingerprint`).
"""
from __future__ import annotations

from omnibind_ros.sim.degrade import audio, camera, event, lidar, tactile, thermal  # noqa: F401
from omnibind_ros.sim.degrade.registry import DEGRADATIONS, apply, check_severity, kinds
from omnibind_ros.sim.degrade.spec import (
    DEGRADABLE,
    PAYLOAD_FIELDS,
    DegradationSpec,
    ModalityDegradation,
)

__all__ = ["DEGRADABLE", "DEGRADATIONS", "PAYLOAD_FIELDS", "DegradationSpec",
           "ModalityDegradation", "apply", "check_severity", "kinds"]
