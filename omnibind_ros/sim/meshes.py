"""Load the catalogue's ``pybullet_data`` meshes into one canonical frame.

The meshes inside the pybullet wheel differ in up axis (y-up vs z-up), in scale (~20x) and in
origin, and most have no texture coordinates. :func:`load_mesh` parses the OBJ once per process
and returns it z-up, centred on its bounding box, scaled so its largest extent is
``Shape.size_m``, with crease-aware vertex normals (flat faces stay flat, curved ones stay smooth)
and box-projected UVs.

The renderer textures surfaces with solid (3-D) procedural textures evaluated in this object frame,
so the UVs are not needed by the RGB path; they are kept so any consumer (a pybullet texture, an
exporter) gets a textured-ready mesh.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from omnibind_ros.sim.catalog import Shape

#: Faces meeting at more than this angle keep separate normals (a hard edge). 50 degrees keeps a
#: cone's rim and a mug's lip sharp while a 450-vertex bunny still shades smoothly.
CREASE_ANGLE_DEG = 50.0


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh in the canonical object frame (z up, bounding-box centre at the origin).

    Attributes
    ----------
    vertices : float32 [V, 3] positions in metres.
    normals : float32 [V, 3] unit vertex normals (split at creases, so V >= the OBJ's count).
    uvs : float32 [V, 2] box-projected texture coordinates in [0, 1].
    indices : int32 [F, 3] counter-clockwise triangles.
    extent : float32 [3] bounding-box size in metres (max(extent) == the shape's size_m).
    name : the source file, for messages.
    """

    vertices: np.ndarray
    normals: np.ndarray
    uvs: np.ndarray
    indices: np.ndarray
    extent: np.ndarray
    name: str

    @property
    def radius(self) -> float:
        """Radius in metres of the bounding sphere about the origin."""
        return float(np.linalg.norm(self.vertices, axis=1).max())


def pybullet_data_path() -> str:
    """The ``pybullet_data`` folder inside the installed pybullet wheel."""
    import pybullet_data  # local: keeps `import omnibind_ros.sim` cheap

    return pybullet_data.getDataPath()


def parse_obj(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read positions and triangles from a Wavefront OBJ (polygons fan-triangulated).

    Parameters
    ----------
    path : the .obj file.

    Returns
    -------
    vertices : float64 [V, 3] positions in file units.
    triangles : int64 [F, 3] zero-based vertex indices.
    """
    verts: list[list[float]] = []
    tris: list[tuple[int, int, int]] = []
    with open(path, encoding="utf-8", errors="ignore") as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append([float(a) for a in line.split()[1:4]])
            elif line.startswith("f "):
                # "f v/vt/vn ..." ; negative indices count back from the current vertex.
                ids = [int(tok.split("/")[0]) for tok in line.split()[1:]]
                ids = [i - 1 if i > 0 else len(verts) + i for i in ids]
                tris.extend((ids[0], ids[k], ids[k + 1]) for k in range(1, len(ids) - 1))
    if not verts or not tris:
        raise ValueError(f"{path}: no vertices or faces")
    return np.asarray(verts, np.float64), np.asarray(tris, np.int64)


def to_z_up(vertices: np.ndarray, up_axis: str) -> np.ndarray:
    """Rotate positions so ``up_axis`` becomes +z (a right-handed rotation, no mirroring)."""
    if up_axis == "z":
        return vertices.copy()
    if up_axis == "y":  # +90 deg about x: y -> z, z -> -y
        return np.stack([vertices[:, 0], -vertices[:, 2], vertices[:, 1]], axis=1)
    if up_axis == "x":  # -90 deg about y: x -> z, z -> -x
        return np.stack([-vertices[:, 2], vertices[:, 1], vertices[:, 0]], axis=1)
    raise ValueError(f"up_axis must be 'x', 'y' or 'z', got {up_axis!r}")


def crease_normals(vertices: np.ndarray, triangles: np.ndarray,
                   crease_deg: float = CREASE_ANGLE_DEG) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Per-corner normals averaged only over faces within ``crease_deg``; re-welded mesh.

    Parameters
    ----------
    vertices : [V, 3] positions.
    triangles : [F, 3] vertex indices.
    crease_deg : faces meeting at a larger dihedral angle do not share a normal.

    Returns
    -------
    positions : [V', 3] positions of the re-welded vertices.
    normals : [V', 3] unit normals.
    triangles : [F, 3] indices into ``positions``.
    """
    e1 = vertices[triangles[:, 1]] - vertices[triangles[:, 0]]
    e2 = vertices[triangles[:, 2]] - vertices[triangles[:, 0]]
    fn_area = np.cross(e1, e2)  # length = 2 * area: area-weighted average for free
    fn_unit = fn_area / np.maximum(np.linalg.norm(fn_area, axis=1, keepdims=True), 1e-20)
    n_face = triangles.shape[0]
    corner_v = triangles.reshape(-1)
    corner_f = np.repeat(np.arange(n_face), 3)
    order = np.argsort(corner_v, kind="stable")
    sv = corner_v[order]
    acc = fn_area[corner_f].copy()  # each corner starts with its own face
    cos_lim = np.cos(np.deg2rad(crease_deg))
    # Corners of one vertex are contiguous in `order`; pair each with its k-th neighbour.
    for k in range(1, int(np.bincount(corner_v).max())):
        same = sv[:-k] == sv[k:]
        if not same.any():
            break
        a, b = order[:-k][same], order[k:][same]
        fa, fb = corner_f[a], corner_f[b]
        close = np.einsum("ij,ij->i", fn_unit[fa], fn_unit[fb]) > cos_lim
        np.add.at(acc, a[close], fn_area[fb[close]])
        np.add.at(acc, b[close], fn_area[fa[close]])
    normals = acc / np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-20)
    # Weld corners that share a vertex and (nearly) a normal, so smooth regions stay shared.
    key = np.concatenate([corner_v[:, None], np.round(normals * 1000).astype(np.int64)], axis=1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    positions = vertices[corner_v[first]]
    return positions, normals[first], inverse.reshape(-1).reshape(n_face, 3)


def box_uvs(positions: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Box (tri-planar) projection: each vertex projects along its normal's dominant axis.

    Parameters
    ----------
    positions : [V, 3] positions centred on the origin.
    normals : [V, 3] unit normals.

    Returns
    -------
    uvs : float32 [V, 2] in [0, 1].
    """
    span = max(float(np.ptp(positions, axis=0).max()), 1e-9)
    p = (positions - positions.min(axis=0)) / span
    axis = np.abs(normals).argmax(axis=1)
    planes = np.array([[1, 2], [0, 2], [0, 1]])[axis]  # x-dominant -> (y, z) etc.
    rows = np.arange(len(p))
    return np.stack([p[rows, planes[:, 0]], p[rows, planes[:, 1]]], axis=1).astype(np.float32)


@functools.cache
def _load(mesh_rel: str, up_axis: str, size_m: float) -> Mesh:
    path = os.path.join(pybullet_data_path(), mesh_rel)
    raw, tris = parse_obj(path)
    v = to_z_up(raw, up_axis)
    lo, hi = v.min(axis=0), v.max(axis=0)
    v = (v - (lo + hi) / 2.0) * (size_m / float((hi - lo).max()))
    # Drop degenerate faces (zero area), which some exported meshes carry.
    area = np.linalg.norm(np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]]),
                          axis=1)
    tris = tris[area > 1e-14]
    pos, nrm, idx = crease_normals(v, tris)
    arrays = (pos.astype(np.float32), nrm.astype(np.float32), box_uvs(pos, nrm),
              idx.astype(np.int32), (pos.max(axis=0) - pos.min(axis=0)).astype(np.float32))
    for arr in arrays:  # shared by every caller in the process: make accidental edits loud
        arr.setflags(write=False)
    return Mesh(*arrays, name=mesh_rel)


def load_mesh(shape: Shape) -> Mesh:
    """The shape's mesh in the canonical frame, parsed once per process (arrays are read-only).

    Parameters
    ----------
    shape : a catalogue shape (mesh path relative to ``pybullet_data``, up axis, size).

    Returns
    -------
    Mesh : z-up, bounding-box centred, largest extent ``shape.size_m`` metres.
    """
    return _load(shape.mesh, shape.up_axis, float(shape.size_m))
