"""CPU rendering of one catalogue object: pybullet TinyRenderer for geometry, numpy for looks.

pybullet (``DIRECT`` connection, ``ER_TINY_RENDERER``) rasterises the mesh and gives smooth-shaded
intensity, depth and a segmentation mask. Everything that makes the picture look like a material is
done in numpy on top of that, because TinyRenderer has no background colour, no per-sample texture
without writing files, and a fixed broad specular lobe:

- the object is rendered white, so pybullet's RGB is a pure *shading* map (ambient + Lambert);
- each object pixel is back-projected to the object frame and coloured by a solid (3-D) procedural
  texture: wood grain (growth rings about an axis), brushed metal (anisotropic streaks), plastic
  (a saturated hue with stipple). A solid texture sticks to the surface as the object moves and
  needs no UV unwrapping;
- metal adds a mirror-like environment term and a sharp Blinn-Phong highlight computed from normals
  estimated on the back-projected points;
- the background (wall, table, out-of-focus clutter, a soft contact shadow) is painted where the
  segmentation is -1; sensor blur and noise come last.

Pose, scale and camera are expressed by moving the *camera* into the object's canonical frame
(see :meth:`Renderer.render`), so each mesh is loaded once per process and never re-posed.
"""
from __future__ import annotations

import colorsys
import functools
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from omnibind_ros.sim.catalog import Material, Shape
from omnibind_ros.sim.meshes import load_mesh

# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def rotation_zyx(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix R = Rz(yaw) @ Ry(pitch) @ Rx(roll), angles in radians.

    Returns
    -------
    np.ndarray : float64 [3, 3], maps object-frame vectors to the world frame.
    """
    cy, sy, cp, sp, cr, sr = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` divided by its norm along the last axis (zero vectors stay zero)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


@dataclass(frozen=True)
class Pose:
    """Where the object is: world = translation + scale * rotation @ canonical.

    Attributes
    ----------
    rotation : float [3, 3] object-to-world rotation.
    translation : float [3] position of the mesh's bounding-box centre in the world, metres.
    scale : uniform scale applied to the catalogue mesh (1.0 = ``Shape.size_m``).
    """

    rotation: np.ndarray
    translation: np.ndarray
    scale: float = 1.0

    def to_object(self, p_world: np.ndarray) -> np.ndarray:
        """World points [..., 3] (metres) to canonical object-frame points [..., 3]."""
        return ((np.asarray(p_world, float) - self.translation) @ self.rotation) / self.scale

    def dir_to_object(self, d_world: np.ndarray) -> np.ndarray:
        """World directions [..., 3] to object-frame directions (rotation only)."""
        return np.asarray(d_world, float) @ self.rotation


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in the world frame (z up).

    Attributes
    ----------
    eye, target : float [3] positions, metres.
    up : float [3] approximate up direction of the image.
    fov_deg : vertical field of view in degrees.
    width, height : image size in pixels.
    near, far : clip distances in metres.
    """

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 40.0
    width: int = 160
    height: int = 160
    near: float = 0.02
    far: float = 5.0

    @staticmethod
    def orbit(distance: float, azimuth: float, elevation: float, *,
              target: tuple[float, float, float] = (0.0, 0.0, 0.0), fov_deg: float = 40.0,
              width: int = 160, height: int = 160, near: float = 0.02,
              far: float = 5.0) -> Camera:
        """A camera ``distance`` metres from ``target`` at azimuth/elevation (radians)."""
        d = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                      np.sin(elevation)])
        eye = tuple(float(v) for v in np.asarray(target) + distance * d)
        return Camera(eye, tuple(float(v) for v in target), (0.0, 0.0, 1.0), fov_deg, width,
                      height, near, far)

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit (right, up, forward) vectors of the image in the world frame."""
        f = unit(np.subtract(self.target, self.eye).astype(float))
        r = unit(np.cross(f, self.up))
        return r, np.cross(r, f), f

    def ray_dirs(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None
                 ) -> np.ndarray:
        """Ray directions scaled so their forward component is 1.

        A pixel's 3-D point is ``eye + depth * ray`` with depth along the optical axis.

        Parameters
        ----------
        rows, cols : int [M] pixel indices; both None = every pixel.

        Returns
        -------
        np.ndarray : [H, W, 3] for every pixel, else [M, 3].
        """
        r, u, f = self.basis()
        ty = np.tan(np.deg2rad(self.fov_deg) / 2.0)
        tx = ty * self.width / self.height
        if rows is None or cols is None:
            rows, cols = np.mgrid[0:self.height, 0:self.width]
        xs = (2.0 * (np.asarray(cols) + 0.5) / self.width - 1.0) * tx
        ys = (1.0 - 2.0 * (np.asarray(rows) + 0.5) / self.height) * ty
        return f + xs[..., None] * r + ys[..., None] * u


@dataclass(frozen=True)
class Light:
    """A directional light plus ambient, as TinyRenderer models it.

    Attributes
    ----------
    direction : float [3] world direction *towards* the light (normalised on use).
    intensity : multiplier of the diffuse term (1.0 = nominal studio light).
    ambient : ambient coefficient, 0..1.
    """

    direction: tuple[float, float, float] = (0.5, -0.3, 1.0)
    intensity: float = 1.0
    ambient: float = 0.35


@dataclass
class RenderResult:
    """Output of one TinyRenderer pass of a white object.

    Attributes
    ----------
    shading : float32 [H, W] ambient + diffuse intensity of the white object, 0..~1 (0 off it).
    depth : float32 [H, W] depth along the camera axis in metres, ``inf`` on the background.
    mask : bool [H, W] True on the object.
    camera : the camera used (world frame).
    pose : the object's pose.
    """

    shading: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    camera: Camera
    pose: Pose
    _rays: np.ndarray | None = field(default=None, repr=False)

    def rays(self) -> np.ndarray:
        """Per-pixel world ray directions [H, W, 3] (forward component 1)."""
        if self._rays is None:
            self._rays = self.camera.ray_dirs()
        return self._rays

    def points_world(self) -> np.ndarray:
        """World points [M, 3] (metres) of the object pixels, in ``mask`` row-major order."""
        rows, cols = np.nonzero(self.mask)
        d = self.depth[rows, cols].astype(np.float64)
        return np.asarray(self.camera.eye) + d[:, None] * self.camera.ray_dirs(rows, cols)

    def points_object(self) -> np.ndarray:
        """Canonical object-frame points [M, 3] of the object pixels (same order)."""
        return self.pose.to_object(self.points_world())

    def normals_world(self) -> np.ndarray:
        """Unit world normals [M, 3] of the object pixels (same order), facing the camera.

        Estimated from the depth map by finite differences of the back-projected points: smooth
        enough for highlights, noisy on silhouettes (only used for specular terms).
        """
        rows, cols = np.nonzero(self.mask)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        rr, cc = np.mgrid[r0:r1, c0:c1]
        m = self.mask[r0:r1, c0:c1]
        d = np.where(m, self.depth[r0:r1, c0:c1], 0.0).astype(np.float32)
        pmap = (d[..., None] * self.camera.ray_dirs(rr, cc)).astype(np.float32)
        n = normals_from_points(pmap, m)[rows - r0, cols - c0]
        view = -self.camera.ray_dirs(rows, cols)
        return n * np.sign(np.sum(n * view, axis=1, keepdims=True) + 1e-9)


# --------------------------------------------------------------------------------------------
# The per-process renderer
# --------------------------------------------------------------------------------------------


class Renderer:
    """One pybullet DIRECT client per shape, created lazily in the process that uses it.

    A client holds exactly one body (the mesh at the origin, identity pose), so nothing is
    moved or hidden between renders. After ``fork`` the child notices the pid changed and opens its
    own clients (pybullet clients are not shared between processes).
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._clients: dict[str, tuple[int, int]] = {}

    def _client(self, shape: Shape) -> tuple[int, int]:
        import pybullet as p  # local: a slow import that prints a banner (to stderr)

        if self._pid != os.getpid():  # forked: the parent's clients are not ours to use
            self._pid, self._clients = os.getpid(), {}
        key = f"{shape.mesh}|{shape.up_axis}|{shape.size_m}"
        if key not in self._clients:
            cid = p.connect(p.DIRECT)
            mesh = load_mesh(shape)
            vis = p.createVisualShape(
                p.GEOM_MESH, vertices=mesh.vertices.tolist(),
                indices=mesh.indices.reshape(-1).tolist(), normals=mesh.normals.tolist(),
                uvs=mesh.uvs.tolist(), rgbaColor=[1, 1, 1, 1], specularColor=[0, 0, 0],
                physicsClientId=cid)
            if vis < 0:
                raise RuntimeError(f"pybullet could not create a visual shape for {shape.mesh}")
            body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vis, physicsClientId=cid)
            self._clients[key] = (cid, body)
        return self._clients[key]

    def render(self, shape: Shape, pose: Pose, camera: Camera, light: Light | None = None
               ) -> RenderResult:
        """Render ``shape`` at ``pose`` seen by ``camera``.

        The scene is rendered in the object's canonical frame: the camera and light are mapped by
        the inverse pose (and the inverse scale), which is exactly equivalent for a rigid,
        uniformly scaled object and lets the body stay at the origin.

        Returns
        -------
        RenderResult : shading [H, W], depth [H, W] in metres (inf off the object), mask [H, W].
        """
        import pybullet as p

        light = light or Light()
        cid, body = self._client(shape)
        s = float(pose.scale)
        eye = pose.to_object(camera.eye)
        target = pose.to_object(camera.target)
        up = pose.dir_to_object(camera.up)
        ldir = pose.dir_to_object(unit(np.asarray(light.direction, float)))
        near, far = camera.near / s, camera.far / s
        view = p.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
        proj = p.computeProjectionMatrixFOV(camera.fov_deg, camera.width / camera.height,
                                            near, far)
        _, _, rgb, zbuf, seg = p.getCameraImage(
            camera.width, camera.height, view, proj, lightDirection=ldir.tolist(),
            lightColor=[1.0, 1.0, 1.0], lightDistance=10.0, shadow=0,
            lightAmbientCoeff=float(light.ambient), lightDiffuseCoeff=float(light.intensity),
            lightSpecularCoeff=0.0, renderer=p.ER_TINY_RENDERER, physicsClientId=cid)
        h, w = camera.height, camera.width
        mask = np.asarray(seg).reshape(h, w) == body
        zbuf = np.asarray(zbuf, np.float64).reshape(h, w)
        depth = (far * near / (far - (far - near) * zbuf)) * s  # OpenGL depth -> metres
        depth = np.where(mask, depth, np.inf).astype(np.float32)
        rgb = np.asarray(rgb, np.uint8).reshape(h, w, 4)
        shading = np.where(mask, rgb[..., 0].astype(np.float32) / 255.0, 0.0)
        return RenderResult(shading.astype(np.float32), depth, mask, camera, pose)

    def close(self) -> None:
        """Disconnect this process's clients (safe to call twice)."""
        import pybullet as p

        if self._pid == os.getpid():
            for cid, _ in self._clients.values():
                try:
                    p.disconnect(physicsClientId=cid)
                except Exception:  # already gone (interpreter shutdown)
                    pass
        self._clients = {}


_RENDERERS: dict[int, Renderer] = {}


def get_renderer() -> Renderer:
    """The renderer of the calling process (created on first use, one per pid)."""
    pid = os.getpid()
    if pid not in _RENDERERS:
        _RENDERERS.clear()  # entries inherited through fork belong to the parent
        _RENDERERS[pid] = Renderer()
    return _RENDERERS[pid]


# --------------------------------------------------------------------------------------------
# Solid procedural textures
# --------------------------------------------------------------------------------------------

_NOISE_N = 32  # periodic lattice size of the noise volume


@functools.lru_cache(maxsize=1)
def _noise_volume() -> np.ndarray:
    """A fixed, periodic, smooth 3-D noise volume [32, 32, 32], zero mean, unit std.

    Built from a constant seed, so every process and every run sees the same texture field;
    per-sample variety comes from random offsets/rotations of the lookup coordinates.
    """
    from scipy.ndimage import gaussian_filter

    vol = np.random.default_rng(20240611).standard_normal((_NOISE_N,) * 3)
    vol = gaussian_filter(vol, 1.0, mode="wrap")
    return ((vol - vol.mean()) / vol.std()).astype(np.float32)


def noise3(p: np.ndarray) -> np.ndarray:
    """Smooth periodic value noise at points ``p`` [M, 3] in lattice units (period 32).

    Returns
    -------
    np.ndarray : float32 [M], roughly zero mean and unit std.
    """
    from scipy.ndimage import map_coordinates

    if p.shape[0] == 0:
        return np.zeros(0, np.float32)
    return map_coordinates(_noise_volume(), (p % _NOISE_N).T, order=1, mode="grid-wrap",
                           prefilter=False)


def fbm(p: np.ndarray, octaves: int = 3) -> np.ndarray:
    """Fractal sum of :func:`noise3` octaves (each 2x the frequency, half the amplitude)."""
    out = np.zeros(p.shape[0], np.float32)
    amp, freq = 1.0, 1.0
    for _ in range(octaves):
        out += amp * noise3(p * freq + 7.3 * freq)
        amp, freq = amp * 0.5, freq * 2.0
    return out / 1.75


@dataclass(frozen=True)
class Appearance:
    """The per-sample look of a material (drawn once per sample, then fixed).

    Attributes
    ----------
    base_rgb : float [3] mean albedo 0..1 (plastic: the drawn hue).
    axis : float [3] unit texture axis in the object frame (grain / brushing direction).
    offset : float [3] texture-space offset (metres), so two samples show different patches.
    tone : multiplicative brightness jitter of the albedo.
    """

    base_rgb: tuple[float, float, float]
    axis: tuple[float, float, float]
    offset: tuple[float, float, float]
    tone: float = 1.0

    @staticmethod
    def draw(material: Material, rng: np.random.Generator) -> Appearance:
        """Draw hue (plastic), grain/brush axis, texture offset and tone from ``rng``."""
        rgb = material.base_rgb
        if material.hue_random:
            # Saturated toy colours; hue uniform, saturation/value high (no grey "plastic").
            h, s, v = rng.uniform(0, 1), rng.uniform(0.65, 0.95), rng.uniform(0.55, 0.9)
            rgb = colorsys.hsv_to_rgb(h, s, v)
        axis = unit(rng.standard_normal(3) * np.array([0.4, 0.4, 1.0]))  # mostly vertical grain
        offset = rng.uniform(0.0, 1.0, 3)
        tone = rng.uniform(0.85, 1.12)
        return Appearance(tuple(float(c) for c in rgb), tuple(float(a) for a in axis),
                          tuple(float(o) for o in offset), float(tone))


def _axis_frame(axis: np.ndarray) -> np.ndarray:
    """Rows (a, b, c): ``c`` = axis, a and b orthonormal to it."""
    c = unit(np.asarray(axis, float))
    a = unit(np.cross(c, [1.0, 0.0, 0.0] if abs(c[0]) < 0.9 else [0.0, 1.0, 0.0]))
    return np.stack([a, np.cross(c, a), c])


def albedo(material: Material, look: Appearance, p_obj: np.ndarray) -> np.ndarray:
    """Surface albedo of ``material`` at object-frame points.

    Parameters
    ----------
    material : which texture (``Material.texture``) and base colour.
    look : the per-sample appearance (hue, axis, offset, tone).
    p_obj : [M, 3] points in the canonical object frame, metres (mesh largest extent = size_m).

    Returns
    -------
    np.ndarray : float32 [M, 3] RGB albedo 0..1.

    Notes
    -----
    Spatial scales are chosen to be visible at ~1.5 mm per pixel: wood rings ~7 mm apart,
    brushing streaks ~2 mm across, stipple dots ~1.5 mm.
    """
    base = np.asarray(look.base_rgb, np.float32) * look.tone
    q = (p_obj - np.asarray(look.offset) * 0.05) @ _axis_frame(np.asarray(look.axis)).T
    tex = material.texture
    if tex == "grain":
        # Growth rings: distance from the grain axis, warped by low-frequency noise.
        r = np.hypot(q[:, 0] + 0.031, q[:, 1] - 0.017)
        warp = fbm(q * np.array([60.0, 60.0, 12.0]) + 3.0, 2)
        ring = 0.5 + 0.5 * np.sin(2 * np.pi * (r / 0.007 + 0.35 * warp))
        fibre = noise3(q * np.array([900.0, 900.0, 25.0]))
        shade = 1.12 - 0.45 * ring**2 + 0.05 * fibre
        return np.clip(base[None] * shade[:, None].astype(np.float32), 0, 1)
    if tex == "brushed":
        streak = noise3(q * np.array([500.0, 500.0, 6.0])) * 0.6 + noise3(
            q * np.array([1500.0, 1500.0, 15.0])) * 0.4
        return np.clip(base[None] * (1.0 + 0.07 * streak[:, None]), 0, 1).astype(np.float32)
    if tex == "stipple":
        dots = noise3(q * 700.0)
        stip = np.where(dots > 1.0, 0.86, 1.0) + 0.03 * noise3(q * 80.0)
        return np.clip(base[None] * stip[:, None], 0, 1).astype(np.float32)
    if tex == "weave":
        t = np.sin(q[:, 0] * 2 * np.pi / 0.003) * np.sin(q[:, 2] * 2 * np.pi / 0.003)
        return np.clip(base[None] * (1.0 + 0.12 * t[:, None]), 0, 1).astype(np.float32)
    return np.broadcast_to(base, (p_obj.shape[0], 3)).astype(np.float32)  # "smooth"


# --------------------------------------------------------------------------------------------
# Image composition
# --------------------------------------------------------------------------------------------


def normals_from_points(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit surface normals [H, W, 3] estimated from a per-pixel point map [H, W, 3].

    Sums of the forward and backward differences that stay on the object (central differences
    inside, one-sided at the silhouette); orientation is arbitrary (the caller flips them towards
    the camera). Off-object pixels get (0, 0, 0).
    """
    m = mask.astype(points.dtype)[..., None]
    p = points * m
    fx = (p[:, 1:] - p[:, :-1]) * (m[:, 1:] * m[:, :-1])
    fy = (p[1:] - p[:-1]) * (m[1:] * m[:-1])
    gx = np.zeros_like(p)
    gy = np.zeros_like(p)
    gx[:, :-1] += fx
    gx[:, 1:] += fx
    gy[:-1] += fy
    gy[1:] += fy
    n = np.empty_like(p)  # cross product, written out (np.cross is slow on small arrays)
    n[..., 0] = gx[..., 1] * gy[..., 2] - gx[..., 2] * gy[..., 1]
    n[..., 1] = gx[..., 2] * gy[..., 0] - gx[..., 0] * gy[..., 2]
    n[..., 2] = gx[..., 0] * gy[..., 1] - gx[..., 1] * gy[..., 0]
    return unit(n) * m


def paint_background(h: int, w: int, rng: np.random.Generator, *, clutter_max: int = 4
                     ) -> tuple[np.ndarray, dict]:
    """A wall + table backdrop with out-of-focus clutter, float32 [H, W, 3] in 0..1.

    Returns
    -------
    image : float32 [H, W, 3].
    params : the drawn parameters (colours, table line, clutter count), JSON-friendly.
    """
    wall = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.35),
                                        rng.uniform(0.35, 0.92)), np.float32)
    table = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.5),
                                         rng.uniform(0.2, 0.8)), np.float32)
    horizon = rng.uniform(0.55, 0.8)
    rows = (np.arange(h, dtype=np.float32) + 0.5) / h
    # Wall falls off towards the top (light from above the table), table darkens to the front.
    wall_grad = 1.0 - 0.25 * (1.0 - rows / horizon)
    table_grad = 1.0 - 0.2 * (rows - horizon) / max(1.0 - horizon, 1e-3)
    col = np.where(rows[:, None] < horizon, wall[None] * wall_grad[:, None],
                   table[None] * table_grad[:, None]).astype(np.float32)
    img = np.repeat(col[:, None, :], w, axis=1)
    n_clutter = int(rng.integers(0, clutter_max + 1))
    for _ in range(n_clutter):
        c = tuple(float(v) for v in colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.2, 0.9),
                                                        rng.uniform(0.2, 0.95)))
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, horizon * h))
        ax, ay = int(rng.uniform(0.05, 0.2) * w), int(rng.uniform(0.08, 0.35) * h)
        if rng.random() < 0.5:
            cv2.rectangle(img, (cx - ax, cy - ay), (cx + ax, cy + ay), c, -1)
        else:
            cv2.ellipse(img, (cx, cy), (ax, ay), 0.0, 0.0, 360.0, c, -1)
    # The backdrop is out of focus (the camera focuses on the object).
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    params = {"wall_rgb": wall.round(4).tolist(), "table_rgb": table.round(4).tolist(),
              "table_line": round(float(horizon), 4), "clutter": n_clutter}
    return img, params


def compose_rgb(res: RenderResult, material: Material, look: Appearance, light: Light,
                background: np.ndarray, rng: np.random.Generator, *, noise_std: float = 0.01,
                blur_px: float = 0.0) -> np.ndarray:
    """Colour a white-object render with ``material`` over ``background``.

    Parameters
    ----------
    res : TinyRenderer pass (shading, depth, mask) of the object.
    material, look : what the surface is made of and its per-sample appearance.
    light : the light used for ``res`` (its direction drives highlights and the shadow).
    background : float32 [H, W, 3] backdrop, 0..1.
    rng : draws the sensor noise.
    noise_std : std of additive Gaussian sensor noise (0..1 scale).
    blur_px : Gaussian defocus sigma in pixels (0 = sharp).

    Returns
    -------
    np.ndarray : uint8 [H, W, 3] RGB.
    """
    h, w = res.mask.shape
    img = background.copy()
    m = res.mask
    ldir = unit(np.asarray(light.direction, float))
    # Soft contact shadow: the silhouette pushed away from the light, blurred, on the backdrop.
    if m.any():
        shift = -ldir[:2] / max(abs(ldir[2]), 0.3) * 0.06 * w
        sh = cv2.warpAffine(m.astype(np.float32), np.float32([[1, 0, shift[0]], [0, 1, 4.0]]),
                            (w, h))
        sh = cv2.GaussianBlur(sh, (0, 0), 4.0)
        img *= (1.0 - 0.35 * min(light.intensity, 1.2) * sh)[..., None]
    if m.any():
        pts_w = res.points_world()
        a = albedo(material, look, res.pose.to_object(pts_w))
        shade = res.shading[m][:, None]
        col = a * shade
        if material.specular > 0.2:
            col = _add_specular(col, a, res, pts_w, material, ldir, light)
        img[m] = col
    if blur_px > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), blur_px)
    if noise_std > 0:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * noise_std
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _add_specular(col: np.ndarray, alb: np.ndarray, res: RenderResult, pts_w: np.ndarray,
                  material: Material, ldir: np.ndarray, light: Light) -> np.ndarray:
    """Blinn-Phong highlight plus (for very specular materials) a sky/floor reflection.

    Why: TinyRenderer's specular lobe is broad and multiplied by the albedo, which makes metal
    look like grey plastic. A sharp white highlight and an environment gradient (bright above,
    dark below, as a room reflects) read as metal.
    """
    n = res.normals_world()
    view = unit(np.asarray(res.camera.eye) - pts_w)
    half = unit(view + ldir[None])
    ks = material.specular
    spec = ks * light.intensity * np.clip(np.sum(n * half, axis=1), 0, 1) ** 40
    out = col + spec[:, None]
    if ks > 0.6:  # polished/brushed metal: reflect the room
        refl = 2.0 * np.sum(n * view, axis=1, keepdims=True) * n - view
        env = 0.55 + 0.45 * np.tanh(3.0 * refl[:, 2])
        out = (1 - 0.5 * ks) * out + 0.5 * ks * alb * env[:, None] * (0.6 + 0.4 * light.intensity)
    return out
