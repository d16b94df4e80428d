"""Pay a process's one-time costs of each sensor's path before a live evaluation's clock starts.

Why (measured): the first point cloud a Python process preprocesses imports its clustering
libraries (open3d once: 0.85 s on the development machine, holding the GIL and the import lock;
SciPy's k-d tree and graph modules now: about 0.4 s); the first audio window compiles
its feature code (about 1 s); a tokenizer or a codec may load on first use the same way. In a
live evaluation the perception node runs in this process, so that cost landed on the first
messages of the bag: the lidar's worker sat in the import while its next messages waited, the
executor (starved of the GIL) delivered the other sensors' messages and ``/clock`` late, and
the availability monitor saw 0.3-0.5 s old samples: camera, tactile, microphone and event
camera went STALE or LOST for a fraction of a second at start-up. Without scenario events the
dropout phases come from those verdicts, so a clean bag was reported with 3-4 "unplugged"
phases in its first second (with the imports done beforehand: none, in every run).

Those phases were true of the node's first second but say nothing about the bag or the
sensors, and offline evaluation (the infinitely fast machine) has none: filtering short phases
out of the report would also hide real sub-second dropouts later in a bag. The cause is a cold
process, so the cure is a warm one: :func:`warm_up` runs the first messages of every played
sensor topic through that sensor's conversion and preprocessing (and a stand-in encoder, so no
inference session is created or touched) in this process, before the node is configured and
the clock starts. Nothing of the node is used or changed; only process-wide first-use work
(imports, compiled kernels, caches) is done early, as the node's own configure-time audio
warm-up does for the microphone.

On a robot the node itself still pays that cost on its first messages for every modality but
audio (its configure-time warm-up covers only the microphone): warming every configured
sensor's path there (``ros/perception_lifecycle.py``) would cure it at the source.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WARM_MESSAGES", "warm_up"]

#: Messages per topic run through its path (a streaming sensor needs a few for a window).
WARM_MESSAGES = 3
#: Stop reading the bag for first messages after this many (a topic that starts late is not
#: worth reading the whole bag for).
READ_LIMIT = 5000


class _StandInEncoder:
    """Returns a fixed unit vector for any input: the warm-up must not create, run or slow down
    the inference sessions the node will use, only the Python-side path up to them."""

    def __init__(self, dim: int) -> None:
        self._unit = np.full(max(1, dim), 1.0 / np.sqrt(max(1, dim)), np.float32)

    def encode(self, modality: str, batch: Any) -> np.ndarray:
        return np.tile(self._unit, (len(batch), 1))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(self._unit, (len(texts), 1))


def warm_up(bag: str | Path, sensors: Sequence[Any], bundle_path: str | Path,
            definitions: Mapping[str, str] | None = None) -> dict[str, float]:
    """Run the first :data:`WARM_MESSAGES` messages of each sensor's topic through its
    conversion and preprocessing in this process (see the module docstring).

    Parameters
    ----------
    bag : the bag to be played.
    sensors : configured sensors to warm (``ros.params.SensorParams``: name, modality, topic,
        message_type, encode_rate_hz), those whose topic is played.
    bundle_path : the bundle the node will load (its preprocessing configuration).
    definitions : the bag's message definitions (types not installed here).

    Returns
    -------
    sensor -> wall seconds its warm-up took (the one-time cost it took out of the evaluated
    span). Errors are ignored: a message the path rejects is the node's to report, in the
    evaluation.
    """
    from omnibind_ros.bag.reader import BagReadError, iter_messages
    from omnibind_ros.bag.stage import bag_deserializer, stamp_of
    from omnibind_ros.core.bundle import load_bundle
    from omnibind_ros.core.pipeline import SensorStage, make_pipeline
    from omnibind_ros.ros.conversions import conversion_for

    bundle = load_bundle(bundle_path, verify=False)
    encoder = _StandInEncoder(int(getattr(bundle, "dim", 1) or 1))
    stages: dict[str, tuple[str, Any, Any]] = {}
    for cfg in sensors:
        try:
            stage = SensorStage(conversion_for(cfg.modality, cfg.message_type),
                                make_pipeline(cfg.modality, bundle, encoder), 0.0)
            stages[cfg.topic] = (cfg.name, stage, bag_deserializer(cfg.message_type,
                                                                   definitions))
        except Exception:  # noqa: BLE001  (the node reports an unusable sensor itself)
            continue
    seconds = {name: 0.0 for name, _, _ in stages.values()}
    left = {topic: WARM_MESSAGES for topic in stages}
    try:
        for read, msg in enumerate(iter_messages(bag, topics=list(stages))):
            if read >= READ_LIMIT or not any(left.values()):
                break
            if not left[msg.topic]:
                continue
            left[msg.topic] -= 1
            name, stage, deserialize = stages[msg.topic]
            start = time.perf_counter()
            try:
                decoded = deserialize(msg.rawdata)
                stage.process(decoded, stamp_of(decoded, msg.log_time_ns, stage.convert),
                              msg.log_time_ns)
            except Exception:  # noqa: BLE001  (see Returns)
                pass
            seconds[name] += time.perf_counter() - start
    except BagReadError:
        pass  # a damaged bag: what was read is warm; the evaluation reports the damage
    return {name: round(s, 3) for name, s in seconds.items()}
