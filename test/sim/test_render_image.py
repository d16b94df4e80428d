"""RGB images: background painted, materials look like their names."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest

from omnibind_ros.sim.catalog import CLASSES
from omnibind_ros.sim.world import World


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def _object_pixels(world: World, seed: int, class_index: int) -> tuple[np.ndarray, np.ndarray]:
    scene = world.scene(seed, class_index)
    view = world.render_view(scene)
    img = world.sample(seed, ["image"], class_index).image
    return img, view.mask


def test_image_shape_dtype_and_painted_background(world: World) -> None:
    img, mask = _object_pixels(world, 3, 0)
    assert img.dtype == np.uint8 and img.shape == (160, 160, 3)
    assert 0.05 < mask.mean() < 0.7
    bg = img[~mask].reshape(-1, 3)
    # TinyRenderer's own background is one flat colour; ours varies (gradient, clutter, noise).
    assert len(np.unique(bg, axis=0)) > 50


def _mean_hsv(img: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    rgb = img[mask].reshape(-1, 3).mean(axis=0) / 255.0
    return colorsys.rgb_to_hsv(*rgb)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_materials_have_their_colours(world: World, seed: int) -> None:
    shape_i = seed % 6
    by_mat = {}
    for c in CLASSES:
        if CLASSES.index(c) // 3 == shape_i:
            img, mask = _object_pixels(world, seed, c.index)
            by_mat[c.material.name] = (img, mask)
    _, s_metal, _ = _mean_hsv(*by_mat["metal"])
    h_wood, s_wood, _ = _mean_hsv(*by_mat["wooden"])
    _, s_plastic, _ = _mean_hsv(*by_mat["plastic"])
    assert s_metal < 0.15  # grey
    assert 0.02 < h_wood < 0.12 and s_wood > 0.35  # brown (orange hue, saturated, darkish)
    assert s_plastic > 0.4  # a saturated toy colour


def test_image_brightness_follows_light_intensity() -> None:
    from omnibind_ros.sim.render import (
        Appearance,
        Camera,
        Light,
        Pose,
        compose_rgb,
        get_renderer,
        paint_background,
    )

    cls = CLASSES[4]  # wooden duck
    pose, cam = Pose(np.eye(3), np.zeros(3), 1.0), Camera.orbit(0.4, 0.3, 0.3)
    look = Appearance.draw(cls.material, np.random.default_rng(0))
    bg, _ = paint_background(160, 160, np.random.default_rng(1))
    means = []
    for intensity in (0.5, 1.1):
        light = Light((0.5, 0.2, 1.0), intensity, 0.3)
        res = get_renderer().render(cls.shape, pose, cam, light)
        img = compose_rgb(res, cls.material, look, light, bg, np.random.default_rng(2))
        means.append(img[res.mask].mean())
    assert means[1] > means[0] + 10
