"""Drawing of ``~/annotated_image``: a camera frame with the answer and the sensors on it.

Pure numpy + OpenCV (no rclpy), so the picture can be made and tested without a ROS graph:
:func:`render_annotation` takes the newest frame (or none), the engine's last
:class:`~omnibind_ros.core.fusion.FusionResult` and the monitor's
:class:`~omnibind_ros.core.availability.SensorHealth` snapshot, and returns an RGB image:

* the frame, scaled to ``width``, with a banner on top: the answer and its confidence (a bar),
  the runners-up, or "no answer" with the reason; at the frame's foot which sensor it came
  from and how old it is (orange when that camera is not live);
* below the frame, one row per sensor: its state (coloured box), modality, measured rate,
  whether the last tick fused it, and what it recognises alone;
* a footer with the bundle and model family that answered.

Nothing here depends on the model family or on sensor names: every bundle, every sensor set.
OpenCV's Hershey fonts are ASCII: other characters are drawn as ``?``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from omnibind_ros.core.availability import SensorHealth, SensorState
from omnibind_ros.core.fusion import FusionResult

__all__ = ["STATE_COLOURS", "frame_to_rgb8", "render_annotation"]

#: RGB colour of each sensor state (the boxes in the sensor rows).
STATE_COLOURS: dict[SensorState, tuple[int, int, int]] = {
    SensorState.LIVE: (60, 200, 90),
    SensorState.DEGRADED: (240, 200, 40),
    SensorState.STALE: (255, 140, 0),
    SensorState.LOST: (230, 60, 60),
    SensorState.DISABLED: (120, 120, 120),
    SensorState.UNKNOWN: (170, 170, 170),
}
_WHITE, _GREY, _GREEN, _ORANGE = (240, 240, 240), (170, 170, 170), (90, 220, 110), (255, 150, 40)
_PANEL = (28, 30, 34)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Base width of the layout; fonts and spacing scale with ``width / _BASE``.
_BASE = 640.0


def frame_to_rgb8(image: np.ndarray, channel_order: str) -> np.ndarray:
    """An ``[H, W, 3]`` uint8 RGB view of a decoded camera frame (``DecodedImage`` fields).

    8-bit frames keep their values; 16-bit and float frames (mono16, 32FC1) are stretched
    from their finite minimum to maximum.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype != np.uint8:
        values = image.astype(np.float32)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / max(high - low, 1e-6))
        image = np.clip(scaled, 0, 255).astype(np.uint8)
    if image.ndim == 2 or channel_order == "mono":
        grey = image if image.ndim == 2 else image[:, :, 0]
        return np.repeat(grey[:, :, None], 3, axis=2)
    rgb = image[:, :, [2, 1, 0]] if channel_order.startswith("bgr") else image[:, :, :3]
    return np.ascontiguousarray(rgb)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


class _Canvas:
    """An RGB image and text helpers at one scale."""

    def __init__(self, image: np.ndarray, scale: float) -> None:
        self.image, self.s = image, scale

    def px(self, value: float) -> int:
        return max(1, round(value * self.s))

    def text(self, text: str, x: float, y: float, size: float = 0.5,
             colour: tuple[int, int, int] = _WHITE, bold: bool = False,
             max_width: float | None = None) -> int:
        """Draw ``text`` with its baseline at (x, y) base pixels; return its width in pixels.
        Text wider than ``max_width`` (base pixels) is cut with "..."."""
        text, scale = _ascii(text), size * self.s
        thickness = self.px(2 if bold else 1)
        if max_width is not None:
            limit = max_width * self.s
            while text and cv2.getTextSize(text, _FONT, scale, thickness)[0][0] > limit:
                text = text[:-4] + "..." if len(text) > 4 else ""
        cv2.putText(self.image, text, (self.px(x), self.px(y)), _FONT, scale, colour,
                    thickness, cv2.LINE_AA)
        return cv2.getTextSize(text, _FONT, scale, thickness)[0][0]

    def box(self, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int],
            filled: bool = True) -> None:
        cv2.rectangle(self.image, (self.px(x0), self.px(y0)), (self.px(x1), self.px(y1)),
                      colour, -1 if filled else self.px(1))

    def shade(self, y0: float, y1: float, alpha: float = 0.6) -> None:
        """Darken a full-width band (for text over the camera frame)."""
        rows = slice(self.px(y0), self.px(y1))
        band = self.image[rows].astype(np.float32) * (1.0 - alpha)
        self.image[rows] = band.astype(np.uint8)


def _scaled_frame(frame: np.ndarray | None, width: int) -> np.ndarray:
    if frame is None:
        height = round(width * 0.75)
        return np.full((height, width, 3), 45, np.uint8)
    h, w = frame.shape[:2]
    height = max(1, min(round(h * width / w), 2 * width))
    interpolation = cv2.INTER_AREA if w > width else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interpolation)


def _percent(score: float) -> str:
    return f"{100.0 * score:.0f}%"


def _banner(c: _Canvas, result: FusionResult | None) -> None:
    c.shade(0, 70)
    if result is None:
        c.text("waiting for the first fusion tick", 12, 32, 0.8, _GREY, bold=True)
        return
    if not result.answered:
        c.text("no answer", 12, 32, 0.9, _ORANGE, bold=True)
        c.text(result.no_answer_reason, 12, 57, 0.48, _WHITE, max_width=616)
        return
    width = c.text(result.best_label, 12, 33, 0.95, _GREEN, bold=True, max_width=470)
    c.text(_percent(result.best_score), 12 + width / c.s + 14, 33, 0.75, _WHITE, bold=True)
    score = min(max(float(result.best_score), 0.0), 1.0)
    c.box(12, 44, 212, 56, _GREY, filled=False)
    if score > 0:
        c.box(12, 44, 12 + 200 * score, 56, _GREEN)
    others = [f"{label} {_percent(p)}" for label, p in
              zip(result.top_labels[1:3], result.top_scores[1:3], strict=False)]
    if others:
        c.text("then: " + ", ".join(others), 224, 55, 0.45, _WHITE, max_width=404)


def _frame_note(c: _Canvas, y_bottom: float, source: str, state: SensorState | None,
                age_s: float | None) -> None:
    if not source:
        c.text("no camera image", 12, y_bottom - 10, 0.55, _GREY)
        return
    live = state is SensorState.LIVE
    text = f"{source}"
    if state is not None and not live:
        text += f" {state.name}"
    if age_s is not None and math.isfinite(age_s):
        text += f", frame {age_s:.1f} s old"
    c.shade(y_bottom - 26, y_bottom, 0.5)
    c.text(text, 12, y_bottom - 9, 0.5, _WHITE if live else _ORANGE)


def _sensor_rows(c: _Canvas, y: float, healths: Sequence[SensorHealth],
                 result: FusionResult | None) -> float:
    alone = {} if result is None else {p.sensor: f"{p.label} {p.score:.2f}"
                                       for p in result.per_modality}
    c.text("sensors", 12, y + 18, 0.5, _GREY)
    c.text("alone", 470, y + 18, 0.5, _GREY)
    y += 26
    for health in healths:
        colour = STATE_COLOURS.get(health.state, _GREY)
        c.box(12, y + 6, 26, y + 20, colour)
        c.text(health.name, 34, y + 18, 0.48, _WHITE, max_width=118)
        c.text(health.modality, 156, y + 18, 0.44, _GREY, max_width=92)
        c.text(health.state.name, 252, y + 18, 0.44, colour, max_width=86)
        if health.rate_hz > 0:
            c.text(f"{health.rate_hz:.1f} Hz", 340, y + 18, 0.44, _WHITE)
        if health.in_fusion:
            c.text("fused", 414, y + 18, 0.44, _GREEN)
        c.text(alone.get(health.name, ""), 470, y + 18, 0.44, _WHITE, max_width=164)
        y += 24
    return y


def render_annotation(frame: np.ndarray | None, result: FusionResult | None,
                      healths: Sequence[SensorHealth], *, width: int = 640, source: str = "",
                      source_state: SensorState | None = None, source_age_s: float | None = None,
                      model: str = "") -> np.ndarray:
    """The annotated image (``[H, width, 3]`` uint8 RGB; see the module docstring).

    Parameters
    ----------
    frame : the newest camera frame as RGB uint8 (:func:`frame_to_rgb8`), or None.
    result : the last fusion tick's result (None before the first tick).
    healths : every sensor's state, in configuration order.
    width : output width in pixels; the frame is scaled to it, the layout with it.
    source, source_state, source_age_s : which sensor the frame is from, its state and the
        frame's age in seconds (shown at the frame's foot).
    model : "bundle [family]" for the footer.
    """
    width = int(width)
    top = _scaled_frame(frame, width)
    scale = width / _BASE
    rows_px = round((26 + 24 * len(healths) + 34) * scale)
    image = np.empty((top.shape[0] + rows_px, width, 3), np.uint8)
    image[:top.shape[0]] = top
    image[top.shape[0]:] = _PANEL
    c = _Canvas(image, scale)
    _banner(c, result)
    frame_bottom = top.shape[0] / scale
    _frame_note(c, frame_bottom, source, source_state, source_age_s)
    y = _sensor_rows(c, frame_bottom + 2, healths, result)
    footer = model or "model: ?"
    if result is not None and result.answered and result.sensors:
        footer += "  |  fused: " + ", ".join(result.sensors)
    c.text(footer, 12, y + 22, 0.42, _GREY, max_width=616)
    return image
