"""A radiometric LWIR camera (FLIR Lepton-like, 80x60, ~57 degree HFOV) beside the RGB camera.

What it models, in order:

1. scene temperature: the background is at ambient with a gentle gradient (warm floor/cold window);
   the object is at ambient + ``Material.temperature_offset_c`` + a per-sample jitter, slightly
   warmer at its top (a handled object);
2. apparent temperature: a radiometric camera assumes emissivity 1, so it reports the blackbody
   temperature of the received radiance, ``T_app = (eps * T_obj^4 + (1 - eps) * T_refl^4)^(1/4)``
   (Stefan-Boltzmann; the 8-14 um band is approximated by total radiance). Polished metal
   (eps ~0.15) mostly *reflects* its surroundings, which are a few kelvin below ambient (ceiling,
   window), so it looks cold; wood/plastic (eps ~0.9) show their own temperature;
3. optics and detector: area-integration onto the 80x60 focal plane, a Gaussian optical blur,
   column fixed-pattern noise and temporal noise with a NETD of ~50 mK (Lepton datasheet: < 50 mK);
4. output: upsampled to the published size and quantised to "TLinear" counts, kelvin * 100.

The silhouette survives only as a blurred low-resolution blob; the material (its contrast to the
background) is the strong signal, as intended by the catalogue.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from omnibind_ros.core.types import THERMAL_KELVIN_PER_COUNT, ThermalFrame
from omnibind_ros.sim.catalog import Material

#: 0 degC in kelvin.
KELVIN_0C = 273.15


@dataclass(frozen=True)
class ThermalScene:
    """Temperatures of one thermal observation (all in degrees Celsius).

    Attributes
    ----------
    ambient_c : air/background temperature.
    object_c : true surface temperature of the object.
    reflected_c : temperature of what the object's surface reflects (apparent sky/room).
    emissivity : object emissivity (from the material, with a small jitter).
    gradient_c : [2] background temperature change across the image (x, y), end to end.
    """

    ambient_c: float
    object_c: float
    reflected_c: float
    emissivity: float
    gradient_c: tuple[float, float]

    @staticmethod
    def draw(material: Material, rng: np.random.Generator, *,
             ambient_range_c: tuple[float, float] = (16.0, 28.0),
             jitter_c: float = 1.0, reflected_drop_c: tuple[float, float] = (2.0, 8.0)
             ) -> ThermalScene:
        """Draw a scene for ``material``.

        Parameters
        ----------
        material : uses ``temperature_offset_c`` and ``emissivity``.
        rng : random source.
        ambient_range_c : uniform range of the ambient temperature (an indoor/outdoor spread).
        jitter_c : std of the object's temperature around ambient + offset.
        reflected_drop_c : how much colder than ambient the reflected surroundings are.
        """
        amb = rng.uniform(*ambient_range_c)
        obj = amb + material.temperature_offset_c + rng.normal(0.0, jitter_c)
        refl = amb - rng.uniform(*reflected_drop_c)
        eps = float(np.clip(material.emissivity + rng.normal(0.0, 0.02), 0.02, 1.0))
        grad = (float(rng.uniform(-1.5, 1.5)), float(rng.uniform(-1.5, 1.5)))
        return ThermalScene(float(amb), float(obj), float(refl), eps, grad)

    def apparent_object_c(self) -> float:
        """Temperature a radiometric (eps = 1) camera reports for the object surface, degC."""
        t4 = (self.emissivity * (self.object_c + KELVIN_0C) ** 4
              + (1.0 - self.emissivity) * (self.reflected_c + KELVIN_0C) ** 4)
        return float(t4 ** 0.25 - KELVIN_0C)


def crop_to_aspect(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop image ``a`` [H, W, ...] to the aspect ratio width:height."""
    h, w = a.shape[:2]
    if w * height > h * width:  # too wide
        cw = int(round(h * width / height))
        x0 = (w - cw) // 2
        return a[:, x0:x0 + cw]
    ch = int(round(w * height / width))
    y0 = (h - ch) // 2
    return a[y0:y0 + ch]


def thermal_frame(mask: np.ndarray, scene: ThermalScene, rng: np.random.Generator, *,
                  sensor_size: tuple[int, int] = (80, 60),
                  output_size: tuple[int, int] = (160, 120), blur_px: float = 1.2,
                  netd_k: float = 0.05, fpn_k: float = 0.03) -> ThermalFrame:
    """Simulate one radiometric frame of the scene given the thermal camera's object mask.

    Parameters
    ----------
    mask : bool [H, W] object silhouette rendered by the thermal camera, at any resolution with
        the sensor's aspect ratio (a multiple of ``sensor_size`` integrates exactly).
    scene : temperatures and emissivity.
    rng : draws detector noise.
    sensor_size : (width, height) of the focal-plane array (Lepton 2.x: 80 x 60).
    output_size : (width, height) of the published image (bilinear upscale of the sensor image).
    blur_px : Gaussian sigma of the optics' point-spread function, in sensor pixels.
    netd_k : temporal noise (noise-equivalent temperature difference), kelvin.
    fpn_k : std of the column fixed-pattern offsets, kelvin.

    Returns
    -------
    ThermalFrame : ``data`` uint16 [out_h, out_w], encoding "mono16", kelvin = counts * 0.01.
    """
    sw, sh = sensor_size
    cover = crop_to_aspect(mask.astype(np.float32), sw, sh)
    # Each detector pixel integrates the radiance over its footprint: area resampling.
    cover = cv2.resize(cover, (sw, sh), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    bg = (scene.ambient_c + scene.gradient_c[0] * (xx / sw - 0.5)
          + scene.gradient_c[1] * (yy / sh - 0.5))
    obj = scene.apparent_object_c()
    # Upper part of the object slightly warmer (held by a hand / lamp above), 0.5 K end to end.
    rows = np.nonzero(cover.sum(axis=1) > 0)[0]
    if rows.size:
        top, bottom = rows[0], rows[-1] + 1
        obj = obj + 0.5 * np.clip((bottom - yy) / max(bottom - top, 1), 0, 1) - 0.25
    temp = cover * obj + (1.0 - cover) * bg
    temp = cv2.GaussianBlur(temp.astype(np.float32), (0, 0), blur_px)
    temp = temp + rng.normal(0.0, fpn_k, (1, sw)).astype(np.float32)  # column offsets
    temp = temp + rng.normal(0.0, netd_k, (sh, sw)).astype(np.float32)
    ow, oh = output_size
    if (ow, oh) != (sw, sh):
        temp = cv2.resize(temp, (ow, oh), interpolation=cv2.INTER_LINEAR)
    counts = np.round((temp.astype(np.float64) + KELVIN_0C) / THERMAL_KELVIN_PER_COUNT)
    return ThermalFrame(np.clip(counts, 0, 65535).astype(np.uint16), "mono16",
                        THERMAL_KELVIN_PER_COUNT)
