"""Point-cloud preprocessing: LiDAR points -> the object's points, float32 [num_points, 3].

Steps: drop non-finite points -> crop to the axis-aligned ROI -> optional voxel down-sampling
-> remove the ground plane (seeded RANSAC over near-horizontal planes) -> cluster (DBSCAN,
:func:`dbscan_labels`: open3d's ``cluster_dbscan`` labelling, computed with SciPy) -> pick one
cluster -> farthest point sampling to ``num_points`` (numpy,
deterministic; repeated cyclically when the cluster is smaller) -> centre at the centroid and
scale so the farthest point has norm 1.

Ground: RANSAC draws ``ground_iterations`` point triples from a ``numpy`` generator seeded with
``ransac_seed``, keeps only hypotheses whose normal is within ``ground_max_tilt_deg`` of
``up_axis`` (so a large wall cannot win over the floor), takes the one with the most inliers
(within ``ground_distance``) and refits it by least squares. That plane is removed only if it is
*ground-like*: it holds at least ``ground_min_fraction`` of the points, its inliers span at least
``ground_min_extent`` horizontally (a small flat object alone in the ROI is not a floor), and at
most ``ground_max_below_fraction`` of the points lie below it (the top of a large box is
horizontal too, but has the box and the floor under it). One plane is removed at most.
open3d's ``segment_plane`` is not used: in open3d 0.20 it returns different planes on repeated
calls on the same points even after ``open3d.utility.random.seed`` (also with
``OMP_NUM_THREADS=1``), which would break training/runtime reproducibility.

Cluster choice: by default the cluster whose centroid is nearest, horizontally (perpendicular
to ``up_axis``), to the ROI centre. The ROI is where the robot expects the object, so its centre
is the best prior; "largest" is fragile because LiDAR density falls with range, making near
clutter outweigh the object. The vertical coordinate is ignored because the ROI's vertical
extent reflects the sensor's mounting height rather than where objects stand.

Clustering: :func:`dbscan_labels` gives exactly the labels of open3d's ``cluster_dbscan``
(tested against it) from a SciPy k-d tree and a connected-components pass. open3d's call holds
the GIL for its whole run (4-8 ms per ~1,000-point cloud): in the perception node, where every
sensor's Python shares one GIL, each LiDAR frame stalled the other sensors' callbacks and the
fusion tick for that long (a thread waking every millisecond beside it was up to 6-11 ms late,
p99). The k-d tree search releases the GIL, so the same clusters cost about the same CPU and
stall the others by less than a millisecond (p99).

Determinism: the same input gives the same output (RANSAC is seeded per call, DBSCAN and FPS
are deterministic); no global random state is read or changed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from omnibind_ros.core.errors import (
    EmptyInputError,
    EmptyRegionError,
    InvalidDtypeError,
    InvalidShapeError,
    NonFiniteInputError,
    NoObjectError,
    PreprocessError,
)
from omnibind_ros.core.preprocess import _config as cfg

__all__ = ["PointCloudPreprocessConfig", "PointCloudPreprocessor", "crop_roi", "dbscan_labels",
           "farthest_point_sampling", "normalise_unit_sphere", "preprocess_point_cloud",
           "remove_ground", "segment_object", "voxel_down_sample"]


@dataclass(frozen=True)
class PointCloudPreprocessConfig(cfg.ConfigMixin):
    """How a LiDAR cloud becomes a model input (units: metres, degrees).

    Attributes
    ----------
    num_points : points in the output.
    roi_min, roi_max : corners (x, y, z) of the axis-aligned region of interest, sensor frame.
    voxel_size : voxel down-sampling edge applied after cropping; 0 disables (bounds the cost
        of clustering for dense clouds).
    remove_ground : try to remove a ground plane.
    up_axis : the world's up direction in the sensor frame (normalised on load).
    ground_distance : RANSAC inlier distance to the plane.
    ground_max_tilt_deg : largest angle between the plane normal and ``up_axis``.
    ground_iterations : RANSAC hypotheses drawn.
    ground_min_fraction : least fraction of points on the plane for it to be ground.
    ground_min_extent : least horizontal extent of the plane's inliers for it to be ground.
    ground_max_below_fraction : largest fraction of points below the plane for it to be ground.
    ransac_seed : seed of the RANSAC random generator.
    cluster_eps : DBSCAN neighbourhood radius.
    cluster_min_points : DBSCAN core-point density, also the least size of a usable cluster.
    cluster_select : "nearest" (to the ROI centre, horizontally) or "largest".
    """

    num_points: int = 1024
    roi_min: tuple[float, float, float] = (0.0, -2.0, -2.0)
    roi_max: tuple[float, float, float] = (4.0, 2.0, 2.0)
    voxel_size: float = 0.0
    remove_ground: bool = True
    up_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    ground_distance: float = 0.02
    ground_max_tilt_deg: float = 15.0
    ground_iterations: int = 200
    ground_min_fraction: float = 0.05
    ground_min_extent: float = 0.5
    ground_max_below_fraction: float = 0.05
    ransac_seed: int = 0
    cluster_eps: float = 0.05
    cluster_min_points: int = 10
    cluster_select: str = "nearest"

    def __post_init__(self) -> None:
        roi_min = cfg.as_float_tuple(self, "roi_min", 3)
        roi_max = cfg.as_float_tuple(self, "roi_max", 3)
        if any(lo >= hi for lo, hi in zip(roi_min, roi_max, strict=True)):
            raise cfg.fail(self, f"roi_min {roi_min} must be < roi_max {roi_max} on every axis")
        up = np.asarray(cfg.as_float_tuple(self, "up_axis", 3))
        if np.linalg.norm(up) == 0:
            raise cfg.fail(self, "up_axis must not be the zero vector")
        cfg.normalise_fields(
            self, roi_min=roi_min, roi_max=roi_max,
            up_axis=tuple(float(v) for v in up / np.linalg.norm(up)),
            num_points=cfg.as_int(self, "num_points", minimum=1),
            voxel_size=cfg.as_float(self, "voxel_size", low=0.0),
            remove_ground=cfg.as_bool(self, "remove_ground"),
            ground_distance=cfg.as_float(self, "ground_distance", low=0.0, low_open=True),
            ground_max_tilt_deg=cfg.as_float(self, "ground_max_tilt_deg", 0.0, 90.0),
            ground_iterations=cfg.as_int(self, "ground_iterations", minimum=1),
            ground_min_fraction=cfg.as_float(self, "ground_min_fraction", 0.0, 1.0),
            ground_min_extent=cfg.as_float(self, "ground_min_extent", low=0.0),
            ground_max_below_fraction=cfg.as_float(self, "ground_max_below_fraction", 0.0, 1.0),
            ransac_seed=cfg.as_int(self, "ransac_seed", minimum=0),
            cluster_eps=cfg.as_float(self, "cluster_eps", low=0.0, low_open=True),
            cluster_min_points=cfg.as_int(self, "cluster_min_points", minimum=1),
            cluster_select=cfg.as_choice(self, "cluster_select", ("nearest", "largest")),
        )

    @property
    def roi_centre(self) -> np.ndarray:
        """float64 [3] centre of the ROI."""
        return (np.asarray(self.roi_min) + np.asarray(self.roi_max)) / 2.0


def _check_points(points: object) -> np.ndarray:
    if not isinstance(points, np.ndarray):
        raise InvalidDtypeError(f"point cloud must be a numpy array, got {type(points)}")
    if points.dtype.kind != "f":
        raise InvalidDtypeError(
            f"point cloud must be float32 or float64 [N, >=3], got dtype {points.dtype}")
    if points.ndim != 2 or points.shape[1] < 3:
        raise InvalidShapeError(f"point cloud must have shape [N, >=3], got {points.shape}")
    if points.shape[0] == 0:
        raise EmptyInputError("point cloud has no points")
    xyz = points[:, :3].astype(np.float64)
    finite = np.all(np.isfinite(xyz), axis=1)
    if not finite.any():
        raise NonFiniteInputError(f"all {points.shape[0]} points have a NaN/inf coordinate")
    return xyz[finite]


def crop_roi(xyz: np.ndarray, config: PointCloudPreprocessConfig) -> np.ndarray:
    """Return the points inside the ROI box (bounds inclusive): float64 [M, 3].

    Raises
    ------
    EmptyRegionError
        No point is inside the ROI.
    """
    inside = np.all((xyz >= config.roi_min) & (xyz <= config.roi_max), axis=1)
    if not inside.any():
        raise EmptyRegionError(
            f"none of the {xyz.shape[0]} finite points lies in the ROI "
            f"{config.roi_min}..{config.roi_max}")
    return xyz[inside]


def dbscan_labels(xyz: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """DBSCAN cluster labels, numbered as open3d's ``PointCloud.cluster_dbscan`` numbers them.

    A point is a *core* point when at least ``min_points`` points (itself included) lie closer
    than ``eps`` to it. Clusters are the connected components of core points (two core points
    closer than ``eps`` are connected), numbered 0, 1, ... in the order of their lowest point
    index, which is the order open3d's scan over the points founds them. A non-core point
    within ``eps`` of core points joins the lowest-numbered of their clusters (the first
    cluster whose expansion reaches it keeps it, in open3d); the rest are noise, -1.

    Parameters
    ----------
    xyz : float [N, 3] points.
    eps : neighbourhood radius (distances < eps count, as in open3d).
    min_points : core-point density.

    Returns
    -------
    int64 [N] labels.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = xyz.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    points = np.asarray(xyz, dtype=np.float64)
    pairs = cKDTree(points).query_pairs(float(eps), output_type="ndarray")
    # open3d's radius search keeps squared distances strictly below eps**2; the tree's is <=
    diff = points[pairs[:, 0]] - points[pairs[:, 1]]
    pairs = pairs[np.einsum("ij,ij->i", diff, diff) < eps * eps]
    first, second = pairs[:, 0], pairs[:, 1]
    core = np.bincount(pairs.ravel(), minlength=n) + 1 >= min_points
    core_idx = np.flatnonzero(core)
    if core_idx.size == 0:
        return labels
    linked = core[first] & core[second]
    graph = coo_matrix((np.ones(int(linked.sum()), dtype=np.int8),
                        (first[linked], second[linked])), shape=(n, n)).tocsr()
    _, component = connected_components(graph, directed=False)
    # number the components by their lowest core index (core_idx is ascending, so np.unique's
    # first occurrences are the lowest indices)
    found, first_at = np.unique(component[core_idx], return_index=True)
    rank = np.empty(component.max() + 1, dtype=np.int64)
    rank[found[np.argsort(first_at)]] = np.arange(found.size)
    labels[core_idx] = rank[component[core_idx]]
    border = np.concatenate([first, second])
    anchor = np.concatenate([second, first])
    reach = ~core[border] & core[anchor]
    if reach.any():
        order = np.lexsort((labels[anchor[reach]], border[reach]))  # by point, then label
        points, cluster = border[reach][order], labels[anchor[reach]][order]
        starts = np.flatnonzero(np.r_[True, points[1:] != points[:-1]])
        labels[points[starts]] = cluster[starts]
    return labels


def voxel_down_sample(xyz: np.ndarray, voxel_size: float) -> np.ndarray:
    """Replace the points of each occupied voxel by their mean.

    Parameters
    ----------
    xyz : float [N, 3] points in metres.
    voxel_size : voxel edge in metres (voxels are aligned to the origin).

    Returns
    -------
    float64 [V, 3], one point per occupied voxel, in lexicographic voxel order (numpy rather
    than open3d's hash-map order, so the order is reproducible).
    """
    keys = np.floor(xyz / voxel_size).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    sums = np.stack([np.bincount(inverse, weights=xyz[:, d]) for d in range(3)], axis=1)
    return sums / counts[:, None]


_RANSAC_SCORE_POINTS = 20000  # hypotheses are scored on at most this many points (speed)
_RANSAC_BLOCK = 32  # hypotheses scored at once (bounds memory to block x points)


def _horizontal_ransac(xyz: np.ndarray, config: PointCloudPreprocessConfig
                       ) -> tuple[np.ndarray, float] | None:
    """Best near-horizontal plane (unit normal oriented up, offset) or None if none is drawn."""
    rng = np.random.default_rng(config.ransac_seed)
    up = np.asarray(config.up_axis)
    triples = xyz[rng.integers(0, xyz.shape[0], (config.ground_iterations, 3))]
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    valid = lengths > 1e-12
    normals = normals[valid] / lengths[valid, None]
    normals *= np.where(normals @ up < 0, -1.0, 1.0)[:, None]
    upright = normals @ up >= math.cos(math.radians(config.ground_max_tilt_deg))
    normals, anchors = normals[upright], triples[valid][upright, 0]
    if normals.shape[0] == 0:
        return None
    offsets = -np.sum(normals * anchors, axis=1)
    score_points = xyz
    if xyz.shape[0] > _RANSAC_SCORE_POINTS:
        score_points = xyz[rng.choice(xyz.shape[0], _RANSAC_SCORE_POINTS, replace=False)]
    counts = np.concatenate([
        np.count_nonzero(np.abs(score_points @ normals[i:i + _RANSAC_BLOCK].T
                                + offsets[i:i + _RANSAC_BLOCK]) <= config.ground_distance,
                         axis=0)
        for i in range(0, normals.shape[0], _RANSAC_BLOCK)])
    best = int(np.argmax(counts))  # the first hypothesis on ties: deterministic
    return normals[best], float(offsets[best])


def _refit(xyz: np.ndarray, inliers: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane through the inliers (smallest principal axis), oriented up."""
    centre = xyz[inliers].mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov((xyz[inliers] - centre).T))
    normal = vectors[:, 0] * (1.0 if vectors[:, 0] @ up >= 0 else -1.0)
    return normal, float(-normal @ centre)


def _is_ground(xyz: np.ndarray, normal: np.ndarray, offset: float, inliers: np.ndarray,
               config: PointCloudPreprocessConfig) -> bool:
    up = np.asarray(config.up_axis)
    if math.degrees(math.acos(min(1.0, float(normal @ up)))) > config.ground_max_tilt_deg:
        return False
    if inliers.sum() < max(3, config.ground_min_fraction * xyz.shape[0]):
        return False
    flat = xyz[inliers] - np.outer(xyz[inliers] @ up, up)  # inliers projected horizontally
    if float(np.max(np.ptp(flat, axis=0))) < config.ground_min_extent:
        return False
    below = np.count_nonzero(xyz @ normal + offset < -config.ground_distance)
    return below <= config.ground_max_below_fraction * xyz.shape[0]


def remove_ground(xyz: np.ndarray, config: PointCloudPreprocessConfig) -> np.ndarray:
    """Remove a ground-like plane (see the module docstring); float64 [M, 3] -> [K, 3].

    Returns the input unchanged when no ground-like plane is found or there are < 3 points.
    """
    if xyz.shape[0] < 3:
        return xyz
    found = _horizontal_ransac(xyz, config)
    if found is None:
        return xyz
    normal, offset = found
    inliers = np.abs(xyz @ normal + offset) <= config.ground_distance
    if inliers.sum() >= 3:
        normal, offset = _refit(xyz, inliers, np.asarray(config.up_axis))
        inliers = np.abs(xyz @ normal + offset) <= config.ground_distance
    if not _is_ground(xyz, normal, offset, inliers, config):
        return xyz
    return xyz[~inliers]


def _select_cluster(xyz: np.ndarray, labels: np.ndarray,
                    config: PointCloudPreprocessConfig) -> np.ndarray:
    sizes = np.bincount(labels[labels >= 0])
    usable = np.flatnonzero(sizes >= config.cluster_min_points)
    if usable.size == 0:
        raise NoObjectError(
            f"no cluster of >= {config.cluster_min_points} points among {xyz.shape[0]} "
            f"points (cluster_eps={config.cluster_eps} m)")
    if config.cluster_select == "largest":
        # argmax keeps the lowest label on ties; labels follow point order: deterministic.
        return xyz[labels == usable[np.argmax(sizes[usable])]]
    up = np.asarray(config.up_axis)
    member = labels >= 0
    sums = np.stack([np.bincount(labels[member], weights=xyz[member, d]) for d in range(3)], 1)
    offsets = sums[usable] / sizes[usable, None] - config.roi_centre
    horizontal = offsets - np.outer(offsets @ up, up)
    return xyz[labels == usable[np.argmin(np.linalg.norm(horizontal, axis=1))]]


def segment_object(points: np.ndarray, config: PointCloudPreprocessConfig) -> np.ndarray:
    """Return the object's points: crop, ground removal, clustering, selection.

    Parameters
    ----------
    points : float32/float64 [N, >=3]; columns 0..2 are x, y, z in metres, others ignored.
    config : the preprocessing config.

    Returns
    -------
    float64 [M, 3] points of the selected cluster.

    Raises
    ------
    InvalidDtypeError, InvalidShapeError, EmptyInputError, NonFiniteInputError,
    EmptyRegionError, NoObjectError
    """
    xyz = crop_roi(_check_points(points), config)
    if config.voxel_size > 0:
        xyz = voxel_down_sample(xyz, config.voxel_size)
    if config.remove_ground:
        xyz = remove_ground(xyz, config)
    if xyz.shape[0] < config.cluster_min_points:
        raise NoObjectError(f"only {xyz.shape[0]} points left after ground removal, fewer "
                            f"than cluster_min_points={config.cluster_min_points}")
    try:
        labels = dbscan_labels(xyz, config.cluster_eps, config.cluster_min_points)
    except (ValueError, RuntimeError, MemoryError) as exc:  # keep SciPy's errors in the family
        raise PreprocessError(f"DBSCAN failed on {xyz.shape[0]} points: {exc}") from exc
    return _select_cluster(xyz, labels, config)


def farthest_point_sampling(xyz: np.ndarray, n: int) -> np.ndarray:
    """Greedy farthest point sampling.

    Parameters
    ----------
    xyz : float [N, 3] points.
    n : number of samples.

    Returns
    -------
    int64 [min(n, N)] indices into ``xyz``, in selection order. The first is the point farthest
    from the centroid (lowest index on ties), so the result does not depend on point order
    except through ties.
    """
    count = min(n, xyz.shape[0])
    # Contiguous per-axis columns: the loop below runs n times over all points, and three 1-D
    # passes are ~3x faster than a reduction over an [N, 3] array.
    x, y, z = (np.ascontiguousarray(xyz[:, k], dtype=np.float64) for k in range(3))
    current = int(np.argmax((x - x.mean()) ** 2 + (y - y.mean()) ** 2 + (z - z.mean()) ** 2))
    nearest = np.full(xyz.shape[0], np.inf)
    chosen = np.empty(count, dtype=np.int64)
    for i in range(count):
        chosen[i] = current
        np.minimum(nearest, (x - x[current]) ** 2 + (y - y[current]) ** 2
                   + (z - z[current]) ** 2, out=nearest)
        current = int(np.argmax(nearest))
    return chosen


def normalise_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centre points at their centroid and scale the farthest to norm 1: float32 [N, 3].

    Raises
    ------
    NoObjectError
        All points coincide (zero extent).
    """
    centred = xyz - xyz.mean(axis=0)
    radius = float(np.max(np.linalg.norm(centred, axis=1)))
    if radius <= 0:
        raise NoObjectError(f"the selected {xyz.shape[0]} points coincide (zero extent)")
    return (centred / radius).astype(np.float32)


def preprocess_point_cloud(points: np.ndarray, config: PointCloudPreprocessConfig
                           ) -> np.ndarray:
    """Map a LiDAR cloud to the model input.

    Parameters
    ----------
    points : float32/float64 [N, >=3] in metres (sensor frame; columns beyond 3 ignored).
    config : the preprocessing config.

    Returns
    -------
    float32 [num_points, 3], centroid 0, max norm 1. A cluster with more than ``num_points``
    points is subsampled by farthest point sampling (in sampling order); a smaller one keeps all
    its points in their original order, repeated cyclically to fill the output. Sampling a cluster
    that is kept whole would only reorder it, at the cost of ``num_points`` passes over it (the
    bulk of the time on a typical LiDAR object), and the point encoders are order-invariant.

    Raises
    ------
    The errors of :func:`segment_object` and :func:`normalise_unit_sphere`.
    """
    obj = segment_object(points, config)
    if obj.shape[0] <= config.num_points:
        chosen = np.arange(obj.shape[0])
    else:
        chosen = farthest_point_sampling(obj, config.num_points)
    chosen = np.resize(chosen, config.num_points)  # cyclic repetition pads small clusters
    return normalise_unit_sphere(obj[chosen])


class PointCloudPreprocessor:
    """Callable point-cloud preprocessor (see :func:`preprocess_point_cloud`)."""

    def __init__(self, config: PointCloudPreprocessConfig | None = None) -> None:
        self.config = config or PointCloudPreprocessConfig()

    @property
    def output_shape(self) -> tuple[int, int]:
        """Shape of the model input: (num_points, 3)."""
        return (self.config.num_points, 3)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Return :func:`preprocess_point_cloud` of ``points``: float32 [num_points, 3]."""
        return preprocess_point_cloud(points, self.config)
