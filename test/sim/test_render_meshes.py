"""Mesh loading and the TinyRenderer geometry pass: every catalogue mesh is usable and correct."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from omnibind_ros.sim.catalog import SHAPES, Shape
from omnibind_ros.sim.meshes import box_uvs, load_mesh, parse_obj, to_z_up
from omnibind_ros.sim.render import Camera, Pose, get_renderer, rotation_zyx


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_catalogue_mesh_is_canonical(shape: Shape) -> None:
    m = load_mesh(shape)
    assert m.vertices.dtype == np.float32 and m.vertices.shape[1] == 3
    assert m.indices.min() >= 0 and m.indices.max() < len(m.vertices)
    assert np.isclose(m.extent.max(), shape.size_m, rtol=1e-4)
    lo, hi = m.vertices.min(axis=0), m.vertices.max(axis=0)
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-6)  # bounding-box centred
    np.testing.assert_allclose(np.linalg.norm(m.normals, axis=1), 1.0, atol=1e-4)
    assert m.uvs.min() >= 0.0 and m.uvs.max() <= 1.0
    with pytest.raises(ValueError):
        m.vertices[0, 0] = 1.0  # shared per process: read-only


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_backprojected_pixels_lie_on_the_mesh(shape: Shape) -> None:
    """Depth + camera model + pose round trip: catches mirrored images and wrong depth scales."""
    m = load_mesh(shape)
    rng = np.random.default_rng(0)
    v, f = m.vertices.astype(float), m.indices
    k = rng.integers(0, len(f), 60000)
    a, b = rng.random((2, k.size))
    s = np.sqrt(a)
    bary = np.stack([1 - s, s * (1 - b), s * b], axis=1)
    surface = cKDTree(np.einsum("nk,nkd->nd", bary, v[f[k]]))
    pose = Pose(rotation_zyx(0.7, 0.2, -0.1), np.array([0.01, -0.02, 0.005]), 1.1)
    res = get_renderer().render(shape, pose, Camera.orbit(0.4, 0.3, 0.4, width=96, height=72))
    assert res.mask.sum() > 300
    dist, _ = surface.query(res.points_object())
    assert np.median(dist) < 2e-3
    # Mirroring the depth map puts the points off the surface: the test can fail.
    mirrored = type(res)(res.shading, res.depth[:, ::-1], res.mask[:, ::-1], res.camera, pose)
    assert np.median(surface.query(mirrored.points_object())[0]) > 2 * np.median(dist)


def test_parse_obj_triangulates_polygons_and_negative_indices(tmp_path) -> None:
    obj = tmp_path / "quad.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/1 4/1\n"
                   "v 0 0 1\nf -1 -4 -5\n")
    v, t = parse_obj(str(obj))
    assert v.shape == (5, 3)
    np.testing.assert_array_equal(t, [[0, 1, 2], [0, 2, 3], [4, 1, 0]])


def test_to_z_up_is_a_rotation() -> None:
    basis = np.eye(3)
    for axis in "xyz":
        r = to_z_up(basis, axis)
        assert np.isclose(np.linalg.det(r), 1.0)
        np.testing.assert_allclose(r["xyz".index(axis)], [0, 0, 1])


def test_box_uvs_project_along_the_dominant_axis() -> None:
    p = np.array([[0.0, 0.2, 0.4], [1.0, 0.0, 0.0]])
    n = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    uv = box_uvs(p, n)
    np.testing.assert_allclose(uv[0], [0.2, 0.4])  # x-dominant -> (y, z)
    np.testing.assert_allclose(uv[1], [1.0, 0.0])  # z-dominant -> (x, y)


def test_light_direction_points_towards_the_light() -> None:
    from omnibind_ros.sim.render import Light

    shape = SHAPES[0]  # mug, seen from +x: image right is world +y
    pose = Pose(np.eye(3), np.zeros(3), 1.0)
    cam = Camera.orbit(0.4, 0.0, 0.2, width=64, height=64)
    assert np.allclose(cam.basis()[0], [0, 1, 0], atol=1e-9)
    right_lit = get_renderer().render(shape, pose, cam, Light((0.3, 1.0, 0.3), 1.0, 0.1))
    left_lit = get_renderer().render(shape, pose, cam, Light((0.3, -1.0, 0.3), 1.0, 0.1))
    right = right_lit.mask.copy()
    right[:, :32] = False
    assert right_lit.shading[right].mean() > left_lit.shading[right].mean() + 0.1
