"""A GelSight-like vision-based tactile sensor pressed onto the object's surface.

How a GelSight image forms, and what is modelled:

1. contact geometry: a depth render of a ~16 mm patch of the mesh, looking along the surface normal
   at a random surface point, gives the local surface; the gel is pushed in until the deepest point
   is ``press_mm`` deep, so the indentation is ``clip(z_min + press - z, 0, press)`` (mm);
2. the elastomer is not infinitely compliant: the indentation is low-pass filtered with a kernel
   that widens as the object gets softer (``Material.hardness``), which rounds the contact edge;
3. material micro-texture (``Material.texture`` at ``roughness_mm`` RMS) is imprinted where the gel
   is in contact: wood grain ridges, brushed-metal scratches, plastic stipple;
4. photometric stereo lighting: the painted gel is lit by red, green and blue LEDs from three
   sides at a low elevation, so each colour channel encodes the surface slope along its LED's
   direction (the basis of GelSight's shape-from-shading);
5. the no-contact *reference* has the LEDs' colour gradients, vignetting and the black marker dots;
   in contact the markers shift outwards with the gel's lateral stretch.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from omnibind_ros.core.types import TactileFrame
from omnibind_ros.sim.catalog import Material, Shape
from omnibind_ros.sim.meshes import Mesh, load_mesh
from omnibind_ros.sim.render import Camera, Pose, Renderer, unit

#: LED azimuths (degrees, image frame: 0 = +x/right, 90 = up) for the R, G, B channels.
LED_AZIMUTH_DEG = (90.0, 210.0, 330.0)
#: LED elevation above the gel plane; low angles give strong slope contrast (GelSight ~ 30-45).
LED_ELEVATION_DEG = 30.0
#: How dark the marker dots are (fraction of the gel's brightness they absorb).
MARKER_DARKNESS = 0.75
#: Lateral marker drift per unit indentation slope (mm); chosen so drift is visible (~3 px).
MARKER_DRIFT_MM = 0.5
#: Field of the coarse view used to find the protruding contact (in patch widths).
RECENTRE_ZOOM = 3.0
#: At most this many coarse views while sliding towards the protruding contact.
RECENTRE_STEPS = 3
#: Distance from which the contact patch is rendered: far enough to be near-orthographic.
PATCH_VIEW_DISTANCE_M = 0.5


@dataclass(frozen=True)
class Contact:
    """Where and how hard the sensor presses, in the object's canonical frame.

    Attributes
    ----------
    point : float [3] surface point (canonical units, metres before scaling).
    normal : float [3] unit outward normal at that point; the sensor presses along ``-normal``.
    press_mm : indentation depth of the deepest point, millimetres.
    roll : rotation of the sensor about the normal, radians.
    """

    point: tuple[float, float, float]
    normal: tuple[float, float, float]
    press_mm: float
    roll: float

    @staticmethod
    def draw(mesh: Mesh, rng: np.random.Generator,
             press_range_mm: tuple[float, float] = (0.6, 2.0)) -> Contact:
        """An area-weighted random *outward-facing* surface point of ``mesh``.

        Faces whose normal points towards the object's centre (a mug's inside, a torus' hole)
        are skipped: a finger presses the outside of an object.
        """
        v, f = mesh.vertices.astype(np.float64), mesh.indices
        area, outward = _face_weights(mesh)
        weights = area * outward
        if weights.sum() <= 0:
            weights = area
        tri = int(rng.choice(len(f), p=weights / weights.sum()))
        r1, r2 = rng.random(2)
        s = np.sqrt(r1)
        bary = np.array([1 - s, s * (1 - r2), s * r2])
        point = bary @ v[f[tri]]
        normal = unit(bary @ mesh.normals[f[tri]].astype(np.float64))
        return Contact(tuple(float(c) for c in point), tuple(float(c) for c in normal),
                       float(rng.uniform(*press_range_mm)), float(rng.uniform(0, 2 * np.pi)))


def _face_weights(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Face areas [F] and an outward-facing indicator [F] (normal . centroid direction > 0.2)."""
    key = (mesh.name, mesh.vertices.shape[0], float(mesh.extent.max()))
    if key not in _FACE_CACHE:
        v, f = mesh.vertices.astype(np.float64), mesh.indices
        cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        area = np.linalg.norm(cross, axis=1) / 2.0
        centroid = v[f].mean(axis=1)
        facing = np.einsum("ij,ij->i", unit(cross), unit(centroid)) > 0.2
        _FACE_CACHE[key] = (area, facing.astype(np.float64))
    return _FACE_CACHE[key]


_FACE_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def contact_depth(renderer: Renderer, shape: Shape, scale: float, contact: Contact, *,
                  size: tuple[int, int] = (96, 96), patch_mm: float = 16.0,
                  recentre: bool = True) -> np.ndarray:
    """Distance (mm) from the sensor plane to the surface over the patch; ``inf`` where none.

    Parameters
    ----------
    scale : object scale (the contact is in canonical units and is scaled with the mesh).
    size : (width, height) of the tactile image.
    patch_mm : physical width of the sensing area (GelSight Mini: ~18 x 14 mm).
    recentre : first find the contact in a coarse view :data:`RECENTRE_ZOOM` times wider and
        centre the patch on it.

    Returns
    -------
    np.ndarray : float32 [height, width], millimetres along the pressing direction.
    """
    w, h = size
    n = unit(np.asarray(contact.normal, float))
    p = np.asarray(contact.point, float) * scale
    # Sensor "up" in the patch: any vector perpendicular to n, rolled by contact.roll.
    a = unit(np.cross(n, [0.0, 0.0, 1.0] if abs(n[2]) < 0.9 else [1.0, 0.0, 0.0]))
    b = np.cross(n, a)
    up = np.cos(contact.roll) * a + np.sin(contact.roll) * b
    d = PATCH_VIEW_DISTANCE_M
    reach = 2.5 * load_mesh(shape).radius * scale  # the far side of the object is within this
    fov = np.rad2deg(2.0 * np.arctan(patch_mm * 1e-3 * h / w / 2.0 / d))
    pose = Pose(np.eye(3), np.zeros(3), scale)

    def look(centre: np.ndarray, zoom: float, px: tuple[int, int]) -> tuple[np.ndarray, Camera]:
        cam = Camera(tuple(centre + n * d), tuple(centre), tuple(up), float(fov * zoom), *px,
                     near=max(d - reach, 1e-3), far=d + reach)
        res = renderer.render(shape, pose, cam)
        return np.where(res.mask, res.depth * 1e3, np.inf).astype(np.float32), cam

    # Close-ups cover every pixel with several layers of the mesh, which makes TinyRenderer
    # slow: render the (smooth) depth at half resolution and upsample it; coarse views at 1/4.
    cw, ch = max(w // 4, 8), max(h // 4, 8)
    if recentre:
        # A finger slides onto what sticks out: find the deepest point in a 3x wider, coarse
        # view and centre the patch on it; repeat while it lies near that view's border (the
        # surface keeps rising), otherwise a point in a dip gives a corner-only contact.
        for _ in range(RECENTRE_STEPS):
            wide, cam = look(p, RECENTRE_ZOOM, (cw, ch))
            if not np.isfinite(wide).any():
                break
            row, col = np.unravel_index(int(np.argmin(wide)), wide.shape)
            dx, dy = col - (cw - 1) / 2.0, row - (ch - 1) / 2.0
            right, cam_up, _ = cam.basis()
            pixel_m = RECENTRE_ZOOM * patch_mm * 1e-3 / cw
            p = p + pixel_m * (dx * right - dy * cam_up)
            if max(abs(dx), abs(dy)) < cw / 3.0:
                break
    half, _ = look(p, 1.0, (max(w // 2, 8), max(h // 2, 8)))
    return _upsample_depth(half, (w, h))


def _upsample_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a depth map with ``inf`` holes (holes stay holes)."""
    finite = np.isfinite(depth)
    if not finite.any():
        return np.full(size[::-1], np.inf, np.float32)
    filled = np.where(finite, depth, depth[finite].max() + 5.0).astype(np.float32)
    up = cv2.resize(filled, size, interpolation=cv2.INTER_LINEAR)
    cover = cv2.resize(finite.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    return np.where(cover >= 0.5, up, np.inf).astype(np.float32)


def indentation(depth_mm: np.ndarray, press_mm: float, hardness: float, pixel_mm: float
                ) -> np.ndarray:
    """Gel indentation height map [H, W] in mm (0 = untouched, ``press_mm`` = deepest).

    The spread kernel's sigma is ``0.15 + 0.9 * (1 - hardness)`` mm (chosen: a hard object leaves
    a crisp edge a few pixels wide; rubber spreads it over ~1 mm).
    """
    if not np.isfinite(depth_mm).any():
        return np.zeros(depth_mm.shape, np.float32)
    zmin = float(np.min(depth_mm))
    h = np.clip(zmin + press_mm - depth_mm, 0.0, press_mm)
    h[~np.isfinite(h)] = 0.0
    sigma_px = (0.15 + 0.9 * (1.0 - hardness)) / pixel_mm
    return cv2.GaussianBlur(h.astype(np.float32), (0, 0), sigma_px)


def _smooth_noise(h: int, w: int, cell_px: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-std smooth 2-D noise [h, w] with features ~``cell_px`` pixels across."""
    gh, gw = max(int(h / cell_px) + 2, 2), max(int(w / cell_px) + 2, 2)
    g = cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h),
                   interpolation=cv2.INTER_CUBIC)
    return (g - g.mean()) / max(float(g.std()), 1e-6)


def micro_texture(texture: str, roughness_mm: float, size: tuple[int, int], pixel_mm: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Material surface relief [H, W] in mm with RMS ``roughness_mm``.

    Spatial scales (chosen, order-of-magnitude): wood grain ridges ~1 mm apart, brushing
    scratches ~0.1-0.3 mm across, plastic stipple dots ~0.3 mm wide at ~2 per mm^2.
    """
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) * pixel_mm
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)  # across the grain / brushing
    if texture == "grain":
        warp = _smooth_noise(h, w, 3.0 / pixel_mm, rng)
        t = np.sin(2 * np.pi * (u / 1.0 + 0.4 * warp)) + 0.3 * _smooth_noise(h, w, 1.5, rng)
    elif texture == "brushed":
        # Scratches: a random profile across the brushing direction, constant along it.
        prof = np.cumsum(rng.standard_normal(4 * (w + h)))
        prof = prof - np.convolve(prof, np.ones(9) / 9, mode="same")
        idx = np.clip((u - u.min()) / (0.5 * pixel_mm), 0, prof.size - 1).astype(np.int64)
        t = prof[idx].astype(np.float32)
    elif texture == "stipple":
        n_dots = rng.poisson(2.0 * (w * pixel_mm) * (h * pixel_mm))
        t = np.zeros((h, w), np.float32)
        t[rng.integers(0, h, n_dots), rng.integers(0, w, n_dots)] = 1.0
        t = cv2.GaussianBlur(t, (0, 0), 0.15 / pixel_mm)
    elif texture == "weave":
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        t = np.sin(2 * np.pi * u / 0.6) * np.sin(2 * np.pi * v / 0.6)
    else:  # "smooth"
        t = _smooth_noise(h, w, 6.0, rng)
    t = t - t.mean()
    return (t * (roughness_mm / max(float(t.std()), 1e-9))).astype(np.float32)


def _led_dirs() -> np.ndarray:
    az = np.deg2rad(np.asarray(LED_AZIMUTH_DEG))
    el = np.deg2rad(LED_ELEVATION_DEG)
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                     np.full(3, np.sin(el))], axis=1)  # [3 LEDs, xyz]


def _markers(size: tuple[int, int], grid: int, shift: tuple[np.ndarray, np.ndarray] | None
             ) -> np.ndarray:
    """Marker darkness [H, W] 0..1: a ``grid`` x ``grid`` array of soft dots.

    ``shift`` = (dx, dy) [H, W] pixel displacement fields; each dot moves by the field's value
    at its rest position (the gel's lateral stretch).
    """
    w, h = size
    step = w / grid
    cy, cx = np.meshgrid((np.arange(grid) + 0.5) * step * h / w, (np.arange(grid) + 0.5) * step,
                         indexing="ij")
    cx, cy = cx.reshape(-1), cy.reshape(-1)
    if shift is not None:
        iy = np.clip(cy.astype(int), 0, h - 1)
        ix = np.clip(cx.astype(int), 0, w - 1)
        cx, cy = cx + shift[0][iy, ix], cy + shift[1][iy, ix]
    sigma = 0.09 * step
    gx = np.exp(-0.5 * ((np.arange(w)[None, :] + 0.5 - cx[:, None]) / sigma) ** 2)  # [M, W]
    gy = np.exp(-0.5 * ((np.arange(h)[None, :] + 0.5 - cy[:, None]) / sigma) ** 2)  # [M, H]
    return np.clip(np.einsum("mh,mw->hw", gy, gx), 0.0, 1.0).astype(np.float32)


def gel_reference(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """No-contact gel image [H, W, 3] float 0..1: LED colour gradients and vignetting."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xx + 0.5) / w * 2 - 1, 1 - (yy + 0.5) / h * 2
    leds = _led_dirs()
    base = 0.38 + rng.uniform(-0.03, 0.03, 3)
    ref = np.empty((h, w, 3), np.float32)
    for c in range(3):
        toward = (x * leds[c, 0] + y * leds[c, 1]) / np.hypot(leds[c, 0], leds[c, 1])
        ref[..., c] = base[c] + 0.16 * (0.5 + 0.5 * toward)  # brighter near its LED
    vignette = 1.0 - 0.28 * (x**2 + y**2) / 2.0
    return ref * vignette[..., None]


def shade_gel(height_mm: np.ndarray, reference: np.ndarray, pixel_mm: float,
              gain: float = 0.8) -> np.ndarray:
    """Photometric GelSight shading of a height map over ``reference`` (both [H, W](, 3)).

    Each channel changes by ``gain * (n . l_c - n0 . l_c)``: n the gel normal from the height
    gradient (mm/mm), l_c the colour's LED direction, n0 = (0, 0, 1) the flat gel.
    """
    gy, gx = np.gradient(height_mm, pixel_mm)
    gy = -gy  # image rows grow downwards; slopes are taken with y up
    n = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    leds = _led_dirs()
    delta = n @ leds.T - leds[:, 2][None, None, :]
    return reference + gain * delta


@dataclass
class GelPatch:
    """Everything about one contact that does not change while the finger stays there.

    Attributes
    ----------
    depth_mm : float32 [H, W] distance from the sensor plane to the surface (inf = none).
    relief_mm : float32 [H, W] material micro-texture (imprinted where in contact).
    gel : float [H, W, 3] no-contact gel image (0..1) without markers.
    rest_markers : float32 [H, W] marker darkness at rest (0..1).
    hardness : the material's hardness (sets the contact spread).
    pixel_mm : size of one pixel on the gel.
    markers : markers per row (0 = none).
    """

    depth_mm: np.ndarray
    relief_mm: np.ndarray
    gel: np.ndarray
    rest_markers: np.ndarray
    hardness: float
    pixel_mm: float
    markers: int = 7

    @staticmethod
    def make(renderer: Renderer, shape: Shape, material: Material, scale: float,
             contact: Contact, rng: np.random.Generator, *, size: tuple[int, int] = (96, 96),
             patch_mm: float = 16.0, markers: int = 7) -> GelPatch:
        """Render the contact geometry and draw the texture and the gel's reference image."""
        pixel_mm = patch_mm / size[0]
        depth = contact_depth(renderer, shape, scale, contact, size=size, patch_mm=patch_mm)
        relief = micro_texture(material.texture, material.roughness_mm, size, pixel_mm, rng)
        gel = gel_reference(size, rng)
        rest = _markers(size, markers, None) if markers > 0 else np.zeros(gel.shape[:2])
        return GelPatch(depth, relief, gel, rest, material.hardness, pixel_mm, markers)

    def frame(self, press_mm: float, rng: np.random.Generator, noise_std: float = 0.01
              ) -> tuple[TactileFrame, dict]:
        """The contact image at indentation ``press_mm`` (0 = not touching) and the reference.

        ``rng`` draws the camera noise, independently for the image and the reference.

        Returns
        -------
        TactileFrame : image and reference, uint8 [H, W, 3].
        info : {"contact_area_mm2": float, "max_indentation_mm": float} for analysis.
        """
        h, w = self.depth_mm.shape
        ind = indentation(self.depth_mm, press_mm, self.hardness, self.pixel_mm)
        if press_mm <= 0:
            ind = np.zeros_like(ind)
        touching = np.clip(ind / 0.05, 0.0, 1.0)  # gel conforms to the texture where in contact
        relief = ind + touching * self.relief_mm
        ref = self.gel * (1.0 - MARKER_DARKNESS * self.rest_markers)[..., None]
        img = shade_gel(relief, self.gel, self.pixel_mm)
        if self.markers > 0:
            # Lateral gel stretch pushes markers away from the contact: ~0.5 mm per unit slope.
            gy, gx = np.gradient(ind, self.pixel_mm)
            k = MARKER_DRIFT_MM / self.pixel_mm
            img *= (1.0 - MARKER_DARKNESS * _markers((w, h), self.markers,
                                                     (-gx * k, -gy * k)))[..., None]
        img = img + rng.normal(0.0, noise_std, img.shape)
        ref = ref + rng.normal(0.0, noise_std, ref.shape)
        to8 = lambda a: np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)  # noqa: E731
        info = {"contact_area_mm2": round(float((ind > 0.02).sum() * self.pixel_mm**2), 3),
                "max_indentation_mm": round(float(ind.max()), 4)}
        return TactileFrame(to8(img), to8(ref)), info


def tactile_frame(renderer: Renderer, shape: Shape, material: Material, scale: float,
                  contact: Contact, rng: np.random.Generator, *, size: tuple[int, int] = (96, 96),
                  patch_mm: float = 16.0, noise_std: float = 0.01, markers: int = 7
                  ) -> tuple[TactileFrame, dict]:
    """One tactile observation: the contact image and its no-contact reference.

    Parameters
    ----------
    renderer, shape, scale : the object (mesh scaled by ``scale``).
    material : texture, roughness_mm and hardness of the surface.
    contact : where/how hard the sensor presses (see :class:`Contact`).
    rng : draws texture, sensor variation and noise.
    size : (width, height) of the image; patch_mm : physical width of the sensing area.
    noise_std : camera noise std (0..1 scale), independent in the image and the reference.
    markers : markers per row (0 = none).

    Returns
    -------
    TactileFrame : image and reference, uint8 [H, W, 3].
    info : {"contact_area_mm2": float, "max_indentation_mm": float} for analysis.
    """
    patch = GelPatch.make(renderer, shape, material, scale, contact, rng, size=size,
                          patch_mm=patch_mm, markers=markers)
    return patch.frame(contact.press_mm, rng, noise_std)
