"""Event-camera preprocessing: EventPacket -> polarity event frame, float32 [3, size, size].

Steps: select a window (the last ``window_ms`` of the packet, or its last ``max_events`` events)
-> drop hot pixels -> per-polarity count histograms at sensor resolution -> resize to ``size``
-> optional log1p -> optional division by a percentile of the non-zero counts (clipped to 1)
-> channels (ON, OFF, ON - OFF) -> ``(v - mean) / std``.

The third channel is the signed net polarity ON - OFF rather than zeros: it says on which side
of a moving edge brightness rose or fell (the direction of motion), and it keeps the
3-channel image trunk's third input informative. Polarity: ``True`` or a positive integer is
ON; ``False``, 0 or a negative integer is OFF.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnibind_ros.core.errors import (
    InvalidDtypeError,
    InvalidShapeError,
    InvalidValueError,
    NoEventsError,
)
from omnibind_ros.core.preprocess import _config as cfg
from omnibind_ros.core.preprocess._image_ops import fit_square, normalise_chw
from omnibind_ros.core.types import EventPacket

__all__ = ["MAX_SENSOR_PIXELS", "EventPreprocessConfig", "EventPreprocessor",
           "event_histogram", "hot_pixel_mask", "preprocess_events", "select_window"]

#: Largest sensor (width * height) a packet may claim: 2048 x 2048, the evt3 address space and
#: over three times the largest event sensor sold (1280 x 960). The histogram is built at sensor
#: resolution, so a corrupt header claiming 2^32 x 2^32 pixels must be refused before it is
#: believed.
MAX_SENSOR_PIXELS = 1 << 22


@dataclass(frozen=True)
class EventPreprocessConfig(cfg.ConfigMixin):
    """How an event packet becomes a model input.

    Attributes
    ----------
    window : "time" (keep events with ``t > t_last - window_ms``) or "count" (keep the last
        ``max_events`` events in time order).
    window_ms : time window in milliseconds.
    max_events : count window in events.
    hot_pixel_k : drop every event of a pixel that fires more than ``k`` times the median count
        of the pixels that fired at all in the window (a stuck pixel's rate is far above a
        moving edge's). 0 disables the filter; otherwise k >= 1.
    log_scale : apply log1p to the (resized) counts.
    normalize_percentile : divide by this percentile of the non-zero values (both polarities)
        and clip to [0, 1], so ON and OFF land in [0, 1] whatever the event rate; 0 keeps counts.
    size : output side in pixels (square output).
    resize_mode : "crop" (shorter side + centre crop) or "stretch".
    interpolation : "auto" is area averaging when shrinking, which preserves mean count density.
    mean, std : per-channel (ON, OFF, ON-OFF) normalisation; the defaults map [0, 1], [0, 1],
        [-1, 1] to [-1, 1].
    """

    window: str = "time"
    window_ms: float = 50.0
    max_events: int = 30000
    hot_pixel_k: float = 10.0
    log_scale: bool = False
    normalize_percentile: float = 99.0
    size: int = 160
    resize_mode: str = "crop"
    interpolation: str = "auto"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.0)
    std: tuple[float, float, float] = (0.5, 0.5, 1.0)

    def __post_init__(self) -> None:
        k = cfg.as_float(self, "hot_pixel_k", low=0.0)
        if 0.0 < k < 1.0:
            raise cfg.fail(self, f"hot_pixel_k must be 0 (off) or >= 1, got {k}")
        cfg.normalise_fields(
            self, hot_pixel_k=k,
            window=cfg.as_choice(self, "window", ("time", "count")),
            window_ms=cfg.as_float(self, "window_ms", low=0.0, low_open=True),
            max_events=cfg.as_int(self, "max_events", minimum=1),
            log_scale=cfg.as_bool(self, "log_scale"),
            normalize_percentile=cfg.as_float(self, "normalize_percentile", 0.0, 100.0),
            size=cfg.as_int(self, "size", minimum=1),
            resize_mode=cfg.as_choice(self, "resize_mode", cfg.RESIZE_MODES),
            interpolation=cfg.as_choice(self, "interpolation", cfg.INTERPOLATIONS),
            mean=cfg.as_float_tuple(self, "mean", 3),
            std=cfg.as_float_tuple(self, "std", 3, positive=True),
        )


def _check_int_array(value: object, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        shape = getattr(value, "shape", type(value).__name__)
        raise InvalidShapeError(f"EventPacket.{name} must be a 1-D numpy array, got {shape}")
    bool_ok = name == "polarity" and value.dtype == np.bool_
    if not (np.issubdtype(value.dtype, np.integer) or bool_ok):
        raise InvalidDtypeError(f"EventPacket.{name} must be an integer array, got {value.dtype}")
    return value


def _check_packet(packet: EventPacket) -> tuple[np.ndarray, ...]:
    if not isinstance(packet, EventPacket):
        raise InvalidDtypeError(f"expected an EventPacket, got {type(packet).__name__}")
    for name in ("width", "height"):
        value = getattr(packet, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
            raise InvalidValueError(f"EventPacket.{name} must be a positive int, got {value!r}")
    if int(packet.width) * int(packet.height) > MAX_SENSOR_PIXELS:
        raise InvalidValueError(
            f"EventPacket sensor {packet.width}x{packet.height} exceeds "
            f"{MAX_SENSOR_PIXELS} pixels (a corrupt header?)")
    arrays = [_check_int_array(getattr(packet, n), n) for n in ("x", "y", "t_ns", "polarity")]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1:
        raise InvalidShapeError(
            "EventPacket x, y, t_ns, polarity must have equal lengths, got "
            f"{[a.shape[0] for a in arrays]}")
    if arrays[0].shape[0] == 0:
        raise NoEventsError("event packet has zero events")
    x, y = arrays[0].astype(np.int64), arrays[1].astype(np.int64)
    for name, v, limit in (("x", x, packet.width), ("y", y, packet.height)):
        if v.min() < 0 or v.max() >= limit:
            raise InvalidValueError(f"event {name} must lie in [0, {limit}), "
                                    f"got range [{v.min()}, {v.max()}]")
    return x, y, arrays[2].astype(np.int64), arrays[3] > 0


def select_window(t_ns: np.ndarray, config: EventPreprocessConfig) -> np.ndarray:
    """Return the indices of the events inside the configured window.

    Parameters
    ----------
    t_ns : int64 [N] event times in nanoseconds (any order).
    config : the preprocessing config.

    Returns
    -------
    int64 [M] indices into the packet, in time order (M >= 1 when N >= 1).
    """
    ordered = bool(np.all(t_ns[1:] >= t_ns[:-1]))
    order = np.arange(t_ns.shape[0]) if ordered else np.argsort(t_ns, kind="stable")
    if config.window == "count":
        return order[-config.max_events:]
    window_ns = int(round(config.window_ms * 1e6))
    t_sorted = t_ns[order]
    first = np.searchsorted(t_sorted, t_sorted[-1] - window_ns, side="right")
    return order[first:]


def hot_pixel_mask(pixel: np.ndarray, n_pixels: int, k: float) -> np.ndarray:
    """Return a bool [N] mask of events whose pixel is *not* hot.

    Parameters
    ----------
    pixel : int64 [N] flat pixel index (y * width + x) of each event.
    n_pixels : width * height.
    k : a pixel is hot if its count exceeds ``k`` times the median count over pixels with at
        least one event; 0 keeps every event.
    """
    if k == 0:
        return np.ones(pixel.shape[0], dtype=bool)
    counts = np.bincount(pixel, minlength=n_pixels)
    median = float(np.median(counts[counts > 0]))
    return counts[pixel] <= k * median


def event_histogram(packet: EventPacket, config: EventPreprocessConfig) -> np.ndarray:
    """Count the windowed, hot-pixel-filtered events per pixel and polarity.

    Parameters
    ----------
    packet : the events; x in [0, width), y in [0, height).
    config : window and hot-pixel settings.

    Returns
    -------
    float32 [2, height, width]: channel 0 counts ON events, channel 1 OFF events.

    Raises
    ------
    NoEventsError
        The packet has zero events.
    InvalidShapeError, InvalidDtypeError, InvalidValueError
        Arrays of unequal length or not 1-D, non-integer arrays, coordinates outside the sensor,
        non-positive width/height.
    """
    x, y, t_ns, on = _check_packet(packet)
    width, height = int(packet.width), int(packet.height)
    keep = select_window(t_ns, config)
    pixel = y[keep] * width + x[keep]
    not_hot = hot_pixel_mask(pixel, width * height, config.hot_pixel_k)
    pixel, on = pixel[not_hot], on[keep][not_hot]
    n = width * height
    hist = np.stack([np.bincount(pixel[on], minlength=n), np.bincount(pixel[~on], minlength=n)])
    return hist.reshape(2, height, width).astype(np.float32)


def _scale(frames: np.ndarray, config: EventPreprocessConfig) -> np.ndarray:
    if config.log_scale:
        frames = np.log1p(frames)
    if config.normalize_percentile > 0:
        nonzero = frames[frames > 0]
        if nonzero.size:
            ref = np.float32(np.percentile(nonzero, config.normalize_percentile))
            frames = np.clip(frames / ref, 0.0, 1.0)
    return frames.astype(np.float32, copy=False)


def preprocess_events(packet: EventPacket, config: EventPreprocessConfig) -> np.ndarray:
    """Map an event packet to the model input.

    Parameters
    ----------
    packet : the events (see :func:`event_histogram`).
    config : the preprocessing config.

    Returns
    -------
    float32 [3, size, size]: (ON, OFF, ON - OFF) after scaling, then ``(v - mean) / std``.

    Raises
    ------
    The errors of :func:`event_histogram`.
    """
    hist = event_histogram(packet, config)
    hwc = fit_square(np.ascontiguousarray(hist.transpose(1, 2, 0)), config.size,
                     config.resize_mode, config.interpolation)
    hwc = _scale(hwc, config)
    frame = np.concatenate([hwc, hwc[:, :, :1] - hwc[:, :, 1:2]], axis=2)
    return normalise_chw(frame, config.mean, config.std)


class EventPreprocessor:
    """Callable event preprocessor (see :func:`preprocess_events`)."""

    def __init__(self, config: EventPreprocessConfig | None = None) -> None:
        self.config = config or EventPreprocessConfig()

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape of the model input: (3, size, size)."""
        return (3, self.config.size, self.config.size)

    def __call__(self, packet: EventPacket) -> np.ndarray:
        """Return :func:`preprocess_events` of ``packet``: float32 [3, size, size]."""
        return preprocess_events(packet, self.config)
