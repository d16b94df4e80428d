"""What exists in the simulated world: shapes (real meshes) x materials = named classes.

The class set is chosen so shape and material are seen by *different* sensors: LiDAR and the
event camera see geometry (and little or no surface appearance), thermal and impact audio see the
material (and at most a blurred silhouette / a size-dependent pitch), tactile sees material
texture plus local curvature. Only the image (and a full caption) sees both, so no single student
modality determines the class and fusion matters.

Physical constants are textbook-order values (emissivity, relative temperature, modal frequencies,
damping); they are chosen to be plausible and clearly separable, not calibrated to any sensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product


@dataclass(frozen=True)
class Shape:
    """A real mesh from the ``pybullet_data`` folder of the pybullet wheel.

    Attributes
    ----------
    name : the noun a user would say ("mug").
    mesh : path relative to ``pybullet_data.getDataPath()``.
    up_axis : the mesh's up axis in its own file ("y" or "z"); the loader rotates to z-up.
    size_m : nominal largest extent in metres (the loader rescales the mesh to it).
    """

    name: str
    mesh: str
    up_axis: str
    size_m: float


@dataclass(frozen=True)
class Material:
    """Per-modality physical appearance of a material.

    Attributes
    ----------
    name : the adjective a user would say ("wooden").
    base_rgb : mean albedo colour, 0..1 (plastic draws its hue at random, see ``hue_random``).
    hue_random : draw a random saturated hue per sample (plastic toys come in many colours).
    texture : procedural texture id ("grain", "brushed", "stipple", "weave", "smooth").
    specular : 0..1 specular strength for the RGB render.
    emissivity : thermal emissivity (polished metal ~0.1-0.3, wood/plastic/rubber ~0.9).
    temperature_offset_c : surface temperature above ambient (objects handled or sun-warmed
        differ by material because of conductivity and heat capacity).
    modal_ratios : ratios of the partial frequencies of an impact to the fundamental.
    decay_s : 60 dB decay time of the fundamental (metal rings, wood/rubber thud).
    base_freq_hz : fundamental frequency of a 0.1 m object (scaled by 1/size).
    roughness_mm : RMS height of the surface texture seen by the tactile sensor.
    hardness : 0..1, how sharp the tactile contact edge is (soft rubber spreads).
    """

    name: str
    base_rgb: tuple[float, float, float]
    hue_random: bool
    texture: str
    specular: float
    emissivity: float
    temperature_offset_c: float
    modal_ratios: tuple[float, ...]
    decay_s: float
    base_freq_hz: float
    roughness_mm: float
    hardness: float


SHAPES: tuple[Shape, ...] = (
    Shape("mug", "objects/mug.obj", "z", 0.12),
    Shape("duck", "duck.obj", "y", 0.14),
    Shape("bunny", "bunny.obj", "y", 0.14),
    Shape("torus", "torus/torus_textured.obj", "z", 0.14),
    Shape("cone", "racecar/meshes/cone.obj", "z", 0.14),
    Shape("teddy bear", "teddy2_VHACD_CHs.obj", "y", 0.16),
)

MATERIALS: tuple[Material, ...] = (
    Material("metal", (0.72, 0.73, 0.75), False, "brushed", 0.9, 0.15, -4.0,
             (1.0, 2.76, 5.40, 8.93), 1.6, 2600.0, 0.002, 1.0),
    Material("wooden", (0.55, 0.36, 0.20), False, "grain", 0.15, 0.92, 2.0,
             (1.0, 2.10, 3.85), 0.12, 900.0, 0.030, 0.75),
    Material("plastic", (0.80, 0.15, 0.12), True, "stipple", 0.45, 0.95, 7.0,
             (1.0, 1.62, 2.95), 0.05, 1500.0, 0.010, 0.55),
)


@dataclass(frozen=True)
class ObjectClass:
    """One recognisable class: a shape made of a material, e.g. "wooden duck"."""

    index: int
    shape: Shape
    material: Material

    @property
    def name(self) -> str:
        return f"{self.material.name} {self.shape.name}"


def build_classes(shapes: tuple[Shape, ...] = SHAPES,
                  materials: tuple[Material, ...] = MATERIALS) -> tuple[ObjectClass, ...]:
    """Every shape x material combination, in a stable order (class index = position)."""
    return tuple(ObjectClass(i, s, m) for i, (s, m) in enumerate(product(shapes, materials)))


CLASSES: tuple[ObjectClass, ...] = build_classes()
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)


def class_by_name(name: str) -> ObjectClass:
    """Look up a class by its user-facing name; ``KeyError`` lists the valid names."""
    for c in CLASSES:
        if c.name == name:
            return c
    raise KeyError(f"unknown class {name!r}; known: {', '.join(CLASS_NAMES)}")
