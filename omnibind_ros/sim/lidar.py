"""A dense solid-state LiDAR looking at the object on the ground, a metre or two away.

Model: the returns inside a region of interest around the object (a box of half-width bounding
radius + margin, up to just above the object: what a detector's crop keeps), from rays on a regular
angular grid (a Livox-style non-repetitive pattern integrated over ~0.1 s is close to uniform at
this scale):

- object returns come from a pybullet depth render whose pixels *are* the rays, so only the visible
  side of the object is sampled (self-occlusion is free);
- the ground plane and a few small clutter boxes are intersected analytically with the same rays;
  the nearest hit wins (the object and boxes shadow the ground behind them);
- range noise along the ray (Gaussian, ~5 mm, typical of short-range ToF), random dropout, and a
  higher dropout at grazing incidence on the ground (weak returns: the reflected power falls with
  the cosine of the incidence angle);
- no intensity channel: LiDAR here carries shape, not material.

Points are float32 in the sensor frame: x forward, y left, z up (REP 103), metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnibind_ros.sim.catalog import Shape
from omnibind_ros.sim.meshes import load_mesh
from omnibind_ros.sim.render import Camera, Pose, Renderer, unit

GROUND, OBJECT, CLUTTER = 0, 1, 2
#: Below this cosine of the incidence angle, ground returns fade linearly to nothing (weak returns
#: at grazing incidence; chosen so that ground at ~15 deg below the sensor loses about half).
GRAZING_COS = 0.5


@dataclass(frozen=True)
class LidarSetup:
    """Geometry and noise of one scan (all lengths in metres).

    Attributes
    ----------
    distance : horizontal range from the sensor to the object centre.
    height : sensor height above the ground.
    lateral : object offset to the left (+y) of the sensor's forward axis.
    grid : rays per side of the square angular window.
    margin : extra half-width of the region of interest around the object's bounding sphere.
    range_noise : std of the range error along each ray.
    dropout : probability that any return is lost.
    boxes : clutter boxes as (x, y, yaw, size_x, size_y, size_z): ground-resting, sensor frame.
    max_range : returns beyond this are dropped.
    """

    distance: float
    height: float
    lateral: float
    grid: int = 96
    margin: float = 0.06
    range_noise: float = 0.005
    dropout: float = 0.05
    boxes: tuple[tuple[float, float, float, float, float, float], ...] = ()
    max_range: float = 10.0


def object_placement(shape: Shape, rotation: np.ndarray, scale: float, setup: LidarSetup
                     ) -> Pose:
    """Pose of the object resting on the ground (z = -height) in the sensor frame."""
    v = load_mesh(shape).vertices.astype(np.float64) @ rotation.T * scale
    zc = -setup.height - float(v[:, 2].min())
    return Pose(rotation, np.array([setup.distance, setup.lateral, zc]), scale)


def draw_boxes(rng: np.random.Generator, centre: np.ndarray, clearance: float, max_boxes: int
               ) -> tuple[tuple[float, float, float, float, float, float], ...]:
    """0..``max_boxes`` small boxes (3-8 cm) beside/behind the object, not touching it."""
    boxes = []
    for _ in range(int(rng.integers(0, max_boxes + 1))):
        size = rng.uniform(0.03, 0.08, 3)
        ang = rng.uniform(-0.6 * np.pi, 0.6 * np.pi)  # mostly to the sides and behind
        r = clearance + 0.5 * float(np.hypot(size[0], size[1])) + rng.uniform(0.01, 0.08)
        x, y = centre[0] + r * np.cos(ang), centre[1] + r * np.sin(ang)
        boxes.append((float(x), float(y), float(rng.uniform(0, np.pi)), *map(float, size)))
    return tuple(boxes)


def _ray_boxes(rays: np.ndarray, boxes, ground_z: float) -> np.ndarray:
    """Nearest hit parameter t (point = t * ray) of each ray [R, 3] with the boxes; inf if none."""
    t_best = np.full(rays.shape[0], np.inf)
    for x, y, yaw, sx, sy, sz in boxes:
        c, s = np.cos(yaw), np.sin(yaw)
        rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # sensor -> box frame
        o = rot @ (-np.array([x, y, ground_z + sz / 2.0]))
        d = rays @ rot.T
        half = np.array([sx, sy, sz]) / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - o) / d
            t2 = (half - o) / d
        tmin = np.nanmax(np.minimum(t1, t2), axis=1)
        tmax = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (tmax >= tmin) & (tmin > 0)
        t_best = np.where(hit & (tmin < t_best), tmin, t_best)
    return t_best


def lidar_scan(renderer: Renderer, shape: Shape, rotation: np.ndarray, scale: float,
               setup: LidarSetup, rng: np.random.Generator, n_points: int = 1024
               ) -> tuple[np.ndarray, np.ndarray]:
    """Scan the object resting on the ground.

    Parameters
    ----------
    renderer, shape : the object.
    rotation : float [3, 3] object orientation in the sensor frame; scale : mesh scale.
    setup : sensor placement, window, noise, clutter.
    rng : draws noise, dropout and the subsample.
    n_points : number of points returned (a random subset of the returns; fewer only if the scan
        has fewer returns).

    Returns
    -------
    points : float32 [N, 3] x forward, y left, z up, metres.
    labels : int8 [N] 0 ground, 1 object, 2 clutter (ground truth for tests and analysis).
    """
    pose = object_placement(shape, rotation, scale, setup)
    radius = load_mesh(shape).radius * scale
    centre = pose.translation
    rng_c = float(np.linalg.norm(centre))
    fov = np.rad2deg(2.0 * np.arctan((radius + setup.margin) / rng_c))
    cam = Camera((0.0, 0.0, 0.0), tuple(centre), (0.0, 0.0, 1.0), float(fov), setup.grid,
                 setup.grid, near=0.05, far=setup.max_range)
    res = renderer.render(shape, pose, cam)
    rays = res.rays().reshape(-1, 3)
    t_obj = res.depth.reshape(-1).astype(np.float64)
    with np.errstate(divide="ignore"):
        t_gnd = np.where(rays[:, 2] < -1e-9, -setup.height / rays[:, 2], np.inf)
    t_box = _ray_boxes(rays, setup.boxes, -setup.height)
    t_all = np.stack([t_gnd, t_obj, t_box], axis=1)
    label = np.argmin(t_all, axis=1).astype(np.int8)
    t = t_all[np.arange(t_all.shape[0]), label]
    u = unit(rays)
    rng_m = t * np.linalg.norm(rays, axis=1)
    keep = np.isfinite(rng_m) & (rng_m < setup.max_range)
    # Dropout: a base rate plus weak returns at grazing incidence on the ground.
    cos_inc = np.abs(u[:, 2])
    p_drop = setup.dropout + (label == GROUND) * (1 - setup.dropout) * np.clip(
        1.0 - cos_inc / GRAZING_COS, 0.0, 1.0)
    keep &= rng.random(p_drop.shape) >= p_drop
    r_noisy = rng_m[keep] + rng.normal(0.0, setup.range_noise, int(keep.sum()))
    pts = u[keep] * r_noisy[:, None]
    lab = label[keep]
    # Region of interest: a box around the object, from the ground to just above its top.
    half = radius + setup.margin
    top = float(res.points_world()[:, 2].max()) if res.mask.any() else centre[2] + radius
    roi = ((np.abs(pts[:, 0] - centre[0]) <= half) & (np.abs(pts[:, 1] - centre[1]) <= half)
           & (pts[:, 2] <= top + setup.margin))
    pts, lab = pts[roi], lab[roi]
    if pts.shape[0] > n_points:
        sel = np.sort(rng.choice(pts.shape[0], n_points, replace=False))
        pts, lab = pts[sel], lab[sel]
    return pts.astype(np.float32), lab
