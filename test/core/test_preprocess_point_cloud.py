"""Point-cloud preprocessing: scene segmentation, ground test, FPS, normalisation, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.errors import (
    EmptyInputError,
    EmptyRegionError,
    InvalidDtypeError,
    InvalidShapeError,
    NonFiniteInputError,
    NoObjectError,
)
from omnibind_ros.core.preprocess.point_cloud import (
    PointCloudPreprocessConfig,
    PointCloudPreprocessor,
    dbscan_labels,
    farthest_point_sampling,
    normalise_unit_sphere,
    preprocess_point_cloud,
    remove_ground,
    segment_object,
    voxel_down_sample,
)

CONFIG = PointCloudPreprocessConfig(num_points=256)
BOX_CENTRE = np.array([2.0, 0.0, -0.4])
BOX_HALF = 0.1


def box_surface(rng: np.random.Generator, centre: np.ndarray, half: float, n: int) -> np.ndarray:
    """Points on the faces of a cube a LiDAR can see: the four sides and the top."""
    points = rng.uniform(-half, half, (n, 3))
    face = rng.integers(0, 5, n)  # 0..3: sides, 4: top
    rows = np.arange(n)
    axis, sign = np.where(face < 2, 0, np.where(face < 4, 1, 2)), np.where(face % 2, -1, 1)
    points[rows, axis] = sign * half
    points[face == 4, 2] = half
    return points + centre


def scene(seed: int = 1) -> np.ndarray:
    """Floor at z = -0.5 (sensor 0.5 m up), a 0.2 m box on it, a denser clutter blob at the
    ROI's edge, and far points outside the ROI."""
    rng = np.random.default_rng(seed)
    n_floor = 8000
    floor = np.c_[rng.uniform(0.0, 4.0, n_floor), rng.uniform(-2.0, 2.0, n_floor),
                  -0.5 + rng.normal(0.0, 0.003, n_floor)]
    box = box_surface(rng, BOX_CENTRE, BOX_HALF, 1500)
    clutter = rng.normal(0.0, 0.05, (2500, 3)) + [3.6, 1.7, -0.35]
    far = rng.uniform(-20, 20, (500, 3)) + [30.0, 0.0, 0.0]
    points = np.vstack([floor, box, clutter, far])
    return points[rng.permutation(points.shape[0])].astype(np.float32)


def test_scene_returns_the_box_not_the_floor_or_clutter():
    obj = segment_object(scene(), CONFIG)
    assert obj.shape[0] > 500
    assert np.all(np.abs(obj - BOX_CENTRE) <= BOX_HALF + 1e-6)
    out = preprocess_point_cloud(scene(), CONFIG)
    assert out.shape == (256, 3) and out.dtype == np.float32


def test_largest_cluster_selection_picks_the_bigger_clutter():
    obj = segment_object(scene(), PointCloudPreprocessConfig(cluster_select="largest"))
    assert np.linalg.norm(obj.mean(axis=0) - [3.6, 1.7, -0.35]) < 0.05


def test_output_is_centred_on_the_unit_sphere_and_deterministic():
    import open3d as o3d

    cloud = scene()
    first = preprocess_point_cloud(cloud, CONFIG)
    for seed in (12345, 7, 99):  # global open3d random state must not matter
        o3d.utility.random.seed(seed)
        np.testing.assert_array_equal(preprocess_point_cloud(cloud.copy(), CONFIG), first)
    assert np.max(np.linalg.norm(first, axis=1)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(first.mean(axis=0), 0.0, atol=1e-6)


def test_ground_removal_keeps_walls_and_box_tops():
    rng = np.random.default_rng(5)
    wall = np.c_[np.full(3000, 1.0), rng.uniform(-1, 1, 3000), rng.uniform(-1, 1, 3000)]
    assert remove_ground(wall, CONFIG).shape[0] == 3000  # vertical plane: not ground
    big_box = box_surface(rng, np.array([2.0, 0.0, 0.0]), 0.5, 6000)
    assert remove_ground(big_box, CONFIG).shape[0] == 6000  # horizontal, but things below it
    floor = np.c_[rng.uniform(0, 2, 3000), rng.uniform(-1, 1, 3000), np.full(3000, -0.5)]
    assert remove_ground(floor, CONFIG).shape[0] == 0
    big_wall = np.c_[np.full(9000, 1.5), rng.uniform(-2, 2, 9000), rng.uniform(-0.5, 2, 9000)]
    kept = remove_ground(np.vstack([big_wall, floor]), CONFIG)
    # the floor is removed although the wall has three times its points
    assert np.all(kept[:, 0] == 1.5) and kept.shape[0] > 8900
    small_flat = np.c_[rng.uniform(1, 1.1, 300), rng.uniform(0, 0.1, 300), np.zeros(300)]
    assert remove_ground(small_flat, CONFIG).shape[0] == 300  # too small to be a floor
    tilted = floor @ np.array([[1, 0, 0], [0, np.cos(0.5), -np.sin(0.5)],
                               [0, np.sin(0.5), np.cos(0.5)]])  # 29 degrees
    assert remove_ground(tilted, CONFIG).shape[0] == 3000


def test_fps_picks_spread_points():
    line = np.c_[np.arange(11.0), np.zeros(11), np.zeros(11)]
    assert sorted(farthest_point_sampling(line, 3).tolist()) == [0, 5, 10]
    rng = np.random.default_rng(0)
    corners = np.array([[1, 1, 0], [-1, 1, 0], [-1, -1, 0], [1, -1, 0]], float)
    cloud = np.vstack([rng.normal(0, 0.1, (200, 3)), corners])
    assert sorted(farthest_point_sampling(cloud, 4).tolist()) == [200, 201, 202, 203]
    assert farthest_point_sampling(cloud, 500).shape == (204,)
    assert len(set(farthest_point_sampling(cloud, 204).tolist())) == 204


def test_small_cluster_is_padded_by_repetition():
    rng = np.random.default_rng(2)
    blob = rng.normal(0.0, 0.01, (30, 3)) + [1.0, 0.0, 0.0]
    config = PointCloudPreprocessConfig(num_points=64, remove_ground=False)
    out = preprocess_point_cloud(blob, config)
    assert out.shape == (64, 3)
    assert np.unique(out, axis=0).shape[0] == 30
    np.testing.assert_array_equal(out[:30], out[30:60])


def test_extra_columns_are_ignored_and_nan_points_dropped():
    cloud = scene()
    intensity = np.random.default_rng(0).uniform(0, 1, (cloud.shape[0], 2)).astype(np.float32)
    with_nans = np.vstack([cloud, np.full((100, 3), np.nan, np.float32)])
    expected = preprocess_point_cloud(cloud, CONFIG)
    np.testing.assert_array_equal(preprocess_point_cloud(np.c_[cloud, intensity], CONFIG),
                                  expected)
    np.testing.assert_array_equal(preprocess_point_cloud(with_nans, CONFIG), expected)


def test_voxel_down_sample_averages_each_voxel():
    xyz = np.array([[0.01, 0.01, 0.0], [0.03, 0.05, 0.0], [0.5, 0.0, 0.0], [-0.01, 0, 0]])
    out = voxel_down_sample(xyz, 0.1)
    np.testing.assert_allclose(out, [[-0.01, 0, 0], [0.02, 0.03, 0.0], [0.5, 0.0, 0.0]])
    config = PointCloudPreprocessConfig(num_points=64, voxel_size=0.02)
    first = preprocess_point_cloud(scene(), config)
    np.testing.assert_array_equal(preprocess_point_cloud(scene(), config), first)


def test_normalise_unit_sphere_exact():
    out = normalise_unit_sphere(np.array([[1.0, 0, 0], [3.0, 0, 0], [2.0, 1.0, 0]]))
    radius = np.sqrt(1 + 1 / 9)  # centroid (2, 1/3, 0); the first two points are farthest
    expected = np.array([[-1.0, -1 / 3, 0], [1.0, -1 / 3, 0], [0.0, 2 / 3, 0]]) / radius
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32


@pytest.mark.parametrize(("points", "error"), [
    (np.zeros((0, 3), np.float32), EmptyInputError),
    (np.full((50, 3), np.nan, np.float32), NonFiniteInputError),
    (np.full((50, 3), 100.0, np.float32), EmptyRegionError),
    (np.zeros((50, 3), np.int32), InvalidDtypeError),
    ([[1.0, 0.0, 0.0]], InvalidDtypeError),
    (np.zeros((50, 2), np.float32), InvalidShapeError),
    (np.zeros((50,), np.float32), InvalidShapeError),
    (np.random.default_rng(0).uniform([0, -2, -2], [4, 2, 2], (40, 3)), NoObjectError),
    (np.tile([[1.0, 0.0, 0.0]], (40, 1)), NoObjectError),  # a cluster with zero extent
    (np.array([[1.0, 0, 0], [1.01, 0, 0]]), NoObjectError),  # too few points to cluster
])
def test_bad_clouds_raise_specific_errors(points, error):
    with pytest.raises(error):
        preprocess_point_cloud(points, CONFIG)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(40, 600), num_points=st.sampled_from([16, 128]),
       spread=st.floats(0.01, 0.04), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_output_shape_dtype_and_normalisation(n, num_points, spread, seed, dtype):
    rng = np.random.default_rng(seed)
    centre = rng.uniform([0.5, -1.5, -1.5], [3.5, 1.5, 1.5])
    blob = (rng.normal(0.0, spread, (n, 3)) + centre).astype(dtype)
    pre = PointCloudPreprocessor(PointCloudPreprocessConfig(num_points=num_points,
                                                            cluster_eps=0.1))
    out = pre(blob)
    assert out.shape == pre.output_shape == (num_points, 3) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert np.max(np.linalg.norm(out, axis=1)) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)


def _scan_labels(xyz: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """open3d's cluster_dbscan algorithm, transcribed: all-pairs neighbours (squared distance
    strictly below eps**2, the point itself included), a scan over the points in index order
    that founds a cluster at each unlabelled core point and expands it; noise reached later
    becomes a border point of the cluster that reaches it first."""
    d2 = ((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(axis=-1)
    neighbours = [np.flatnonzero(row < eps * eps) for row in d2]
    labels = np.full(len(xyz), -2, dtype=np.int64)
    cluster = 0
    for seed in range(len(xyz)):
        if labels[seed] != -2:
            continue
        if len(neighbours[seed]) < min_points:
            labels[seed] = -1
            continue
        labels[seed] = cluster
        frontier = list(neighbours[seed])
        while frontier:
            point = frontier.pop()
            if labels[point] == -1:
                labels[point] = cluster
            if labels[point] != -2:
                continue
            labels[point] = cluster
            if len(neighbours[point]) >= min_points:
                frontier.extend(neighbours[point])
        cluster += 1
    return labels


def _open3d_labels(xyz: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    o3d = pytest.importorskip("open3d", reason="open3d is the second reference DBSCAN")
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    return np.asarray(cloud.cluster_dbscan(eps=eps, min_points=min_points), dtype=np.int64)


def _blobs(seed: int, blobs: int, n: int, spread: float, duplicates: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-0.3, 0.3, (blobs, 3))
    xyz = centres[rng.integers(0, blobs, n)] + rng.normal(0, spread, (n, 3))
    if duplicates:  # repeated returns (distance 0) count as neighbours
        xyz = np.concatenate([xyz, xyz[: n // 3]])[rng.permutation(n + n // 3)]
    return xyz


_CLOUDS = dict(seed=st.integers(0, 2**31 - 1), blobs=st.integers(1, 5), n=st.integers(1, 300),
               spread=st.floats(0.005, 0.2), eps=st.floats(0.01, 0.1),
               min_points=st.integers(1, 15), duplicates=st.booleans())


@settings(max_examples=60, deadline=None)
@given(**_CLOUDS)
def test_dbscan_labels_follow_the_scan_order_algorithm(seed, blobs, n, spread, eps, min_points,
                                                       duplicates):
    """Cluster numbering, border points and noise as open3d's algorithm defines them."""
    xyz = _blobs(seed, blobs, n, spread, duplicates)
    np.testing.assert_array_equal(dbscan_labels(xyz, eps, min_points),
                                  _scan_labels(xyz, eps, min_points))


@settings(max_examples=30, deadline=None)
@given(**_CLOUDS)
def test_dbscan_labels_equal_open3ds(seed, blobs, n, spread, eps, min_points, duplicates):
    xyz = _blobs(seed, blobs, n, spread, duplicates)
    np.testing.assert_array_equal(dbscan_labels(xyz, eps, min_points),
                                  _open3d_labels(xyz, eps, min_points))


def test_dbscan_neighbours_are_strictly_closer_than_eps():
    line = np.array([[0.0, 0, 0], [0.5, 0, 0], [1.0, 0, 0], [1.5, 0, 0]])  # exactly eps apart
    assert (dbscan_labels(line, 0.5, 2) == -1).all()
    np.testing.assert_array_equal(dbscan_labels(line, 0.5000001, 2), [0, 0, 0, 0])
    np.testing.assert_array_equal(dbscan_labels(line, 0.5, 2), _scan_labels(line, 0.5, 2))


def test_dbscan_labels_on_a_lidar_like_scene():
    """Clusters touching through border points, a sparse fringe and noise, as LiDAR gives."""
    rng = np.random.default_rng(3)
    box = rng.uniform(-0.1, 0.1, (600, 3))
    near = rng.uniform(-0.05, 0.05, (150, 3)) + [0.2, 0.0, 0.0]  # almost touching the box
    fringe = rng.uniform(-0.5, 0.5, (60, 3))
    xyz = np.concatenate([fringe, box, near])
    labels = dbscan_labels(xyz, 0.05, 10)
    assert labels.max() >= 0 and (labels == -1).any()
    np.testing.assert_array_equal(labels, _scan_labels(xyz, 0.05, 10))


def test_dbscan_labels_of_nothing_and_of_sparse_points():
    assert dbscan_labels(np.zeros((0, 3)), 0.05, 10).shape == (0,)
    far_apart = np.arange(30, dtype=np.float64).reshape(10, 3)
    assert (dbscan_labels(far_apart, 0.05, 2) == -1).all()
    assert (dbscan_labels(far_apart, 0.05, 1) == np.arange(10)).all()  # each its own core
