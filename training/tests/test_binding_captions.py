"""Styled caption corpora (binding.captions): determinism, style vocabularies, instance facts."""
from __future__ import annotations

import re

import numpy as np
import pytest

from omnibind_ros.sim.catalog import CLASSES, class_by_name
from omnibind_ros.sim.text import PROMPT_TEMPLATES, label_prompts
from omnibind_train.binding.captions import (
    COLOUR_WORDS,
    MOTION_WORDS,
    PARTIAL_P,
    PITCH_WORDS,
    SOUND_NOUNS,
    STYLE_MODALITY,
    STYLES,
    TEMPERATURE_WORDS,
    TEXTURE_WORDS,
    caption_corpus,
    style_prompts,
    styled_caption,
    styled_caption_kind,
)

GEOMETRY_WORDS = ("lidar", "point cloud", "scan", "3d", "depth points", "cm")


def _any(text: str, words) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def _draws(obj, nuisance, style, n, start=0):
    return [styled_caption(obj, nuisance, style, np.random.default_rng([i, 99]))
            for i in range(start, start + n)]


@pytest.fixture(scope="module")
def samples():
    """One real sample per class (nuisance dicts straight from the simulator)."""
    from omnibind_ros.sim.world import World, WorldConfig
    world = World(WorldConfig())
    return [world.sample(100 + c.index, class_index=c.index) for c in CLASSES]


@pytest.fixture(scope="module")
def corpus(samples):
    """{style: [(obj, caption)]}: 12 captions of each class's real sample per style."""
    out = {}
    for style in STYLES:
        out[style] = [(CLASSES[s.class_index], c) for s in samples
                      for c in _draws(CLASSES[s.class_index], s.nuisance, style, 12)]
    return out


def test_styles_and_modalities():
    assert STYLES == ("appearance", "sound", "geometry", "heat", "motion", "texture")
    assert set(STYLE_MODALITY) == set(STYLES) == set(PARTIAL_P)
    assert STYLE_MODALITY["sound"] == "audio" and STYLE_MODALITY["geometry"] == "point_cloud"
    with pytest.raises(ValueError, match="unknown caption style"):
        styled_caption(CLASSES[0], {}, "smell", np.random.default_rng(0))


def test_deterministic_per_seed_and_style(samples):
    objs = [CLASSES[s.class_index] for s in samples]
    nus = [s.nuisance for s in samples]
    seeds = [100 + i for i in range(len(samples))]
    for style in STYLES:
        a = caption_corpus(objs, nus, seeds, style)
        assert a == caption_corpus(objs, nus, seeds, style)
        # Each caption reproducible alone, from (seed, style) only.
        k = STYLES.index(style)
        assert a[3] == styled_caption(objs[3], nus[3], style,
                                      np.random.default_rng([seeds[3], k, 7]))
        assert caption_corpus(objs[3:5], nus[3:5], seeds[3:5], style) == a[3:5]
    per_sample = [[caption_corpus([o], [n], [s], st)[0] for st in STYLES]
                  for o, n, s in zip(objs, nus, seeds, strict=True)]
    assert all(len(set(caps)) == len(STYLES) for caps in per_sample)
    with pytest.raises(ValueError, match="differ in length"):
        caption_corpus(objs, nus[:-1], seeds, "sound")


def test_captions_are_well_formed(corpus):
    for style, pairs in corpus.items():
        for _, text in pairs:
            assert text and text == text.strip() and text == text.lower(), (style, text)
            assert "{" not in text and "}" not in text and "  " not in text, (style, text)
            assert " ," not in text and " :" not in text and "None" not in text
            assert not re.search(r"\ba [aeiou]", text), (style, text)
            assert not re.search(r"\ban [^aeiou\W]", text), (style, text)


def test_each_style_uses_its_own_vocabulary(corpus):
    sound_nouns = {w for ws in SOUND_NOUNS.values() for w in ws}
    own = {"sound": sound_nouns, "heat": TEMPERATURE_WORDS, "motion": MOTION_WORDS,
           "texture": TEXTURE_WORDS, "geometry": GEOMETRY_WORDS}
    for style, pairs in corpus.items():
        texts = [t for _, t in pairs]
        if style in own:
            missing = [t for t in texts if not _any(t, own[style])]
            assert not missing, (style, missing[:3])
        if style != "appearance":  # colour words are for the image corpus only
            assert not any(_any(t, COLOUR_WORDS) for t in texts), style
        if style != "sound":
            assert not any(_any(t, sound_nouns) for t in texts), style
        if style not in ("heat",):
            assert not any(_any(t, ("warm", "warmer", "cold", "colder", "degree", "degrees"))
                           for t in texts), style
    appearance = [t for _, t in corpus["appearance"]]
    assert sum(_any(t, COLOUR_WORDS) for t in appearance) > 0.4 * len(appearance)


def test_colour_follows_instance_albedo():
    duck = class_by_name("plastic duck")
    blue = _draws(duck, {"albedo_rgb": [0.1, 0.2, 0.85]}, "appearance", 150)
    assert sum("blue" in t for t in blue) > 40
    assert not any(_any(t, ("red", "green", "yellow", "brown")) for t in blue)
    wood = _draws(class_by_name("wooden duck"), {}, "appearance", 100)  # class-level colour
    assert any("brown" in t for t in wood) and not any(_any(t, ("blue", "red")) for t in wood)


def test_heat_reflects_object_minus_ambient():
    warm_re = ("warm", "warmer", "hot", "heated", "lukewarm", "above ambient")
    cold_re = ("cool", "cooler", "cold", "colder", "chilly", "below ambient")
    hot = _draws(class_by_name("wooden cone"), {"object_c": 34.0, "ambient_c": 21.0}, "heat", 150)
    assert all(_any(t, warm_re) for t in hot) and not any(_any(t, cold_re) for t in hot)
    assert any("13 degrees above ambient" in t for t in hot)
    one = _draws(class_by_name("wooden cone"), {"object_c": 22.1, "ambient_c": 21.0}, "heat", 100)
    assert any("1 degree above ambient" in t for t in one)
    assert not any("1 degrees" in t or "0 degree" in t for t in one)
    cold = _draws(class_by_name("plastic cone"), {"object_c": 12.0, "ambient_c": 22.0,
                                                  "apparent_object_c": 12.5}, "heat", 150)
    assert all(_any(t, cold_re) for t in cold) and not any(_any(t, warm_re) for t in cold)
    # Polished metal: low emissivity is mentioned sometimes, high emissivity never.
    metal = _draws(class_by_name("metal mug"), {"emissivity": 0.15}, "heat", 200)
    assert any("reflect" in t or "emissivity" in t for t in metal)
    plastic = _draws(class_by_name("plastic mug"), {"emissivity": 0.95}, "heat", 200)
    assert not any("reflect" in t or "emissivity" in t for t in plastic)


def test_pitch_follows_size():
    def bands(size):
        texts = _draws(class_by_name("metal torus"), {"size_m": size}, "sound", 300)
        return {b: sum(_any(t, ws) for t in texts) for b, ws in PITCH_WORDS.items()}

    small, large = bands(0.10), bands(0.18)
    assert small["high"] > 60 and small["low"] == 0 and small["mid"] == 0
    assert large["low"] > 60 and large["high"] == 0 and large["mid"] == 0
    no_size = _draws(class_by_name("metal torus"), {}, "sound", 100)
    assert not any(_any(t, [w for ws in PITCH_WORDS.values() for w in ws]) for t in no_size)


def test_sound_character_follows_material():
    metal = _draws(class_by_name("metal mug"), {"size_m": 0.13}, "sound", 100)
    wood = _draws(class_by_name("wooden mug"), {"size_m": 0.13}, "sound", 100)
    assert all(_any(t, SOUND_NOUNS["ringing"]) for t in metal)
    assert all(_any(t, SOUND_NOUNS["knock"]) for t in wood)


def test_motion_direction_and_spin():
    duck = class_by_name("metal duck")

    def direction_words(vel, rate=0.0, elev=20.0):
        texts = _draws(duck, {"object_velocity_mps": vel, "object_yaw_rate_rps": rate,
                              "camera_elevation_deg": elev}, "motion", 150)
        return texts, {w: sum(w in t for t in texts)
                       for w in ("left", "right", "upwards", "downwards", "towards", "away",
                                 "counter-clockwise", " clockwise")}

    _, right = direction_words([0.0, 0.2, 0.0], rate=1.2)
    assert right["right"] > 40 and right["left"] == 0
    assert right["counter-clockwise"] > 20 and right[" clockwise"] == 0
    _, left = direction_words([0.0, -0.2, 0.0], rate=-1.2)
    assert left["left"] > 40 and left["right"] == 0
    assert left[" clockwise"] > 20 and left["counter-clockwise"] == 0
    # Up on the image plane (camera at 20 degrees elevation): (-sin e, 0, cos e).
    e = np.deg2rad(20.0)
    _, up = direction_words([-0.2 * np.sin(e), 0.0, 0.2 * np.cos(e)])
    assert up["upwards"] > 40 and up["downwards"] == up["left"] == up["right"] == 0
    # Along the optical axis (back towards the eye): "towards the camera".
    texts, towards = direction_words([0.2 * np.cos(e), 0.0, 0.2 * np.sin(e)])
    assert sum(("towards" in t) or ("closer" in t) for t in texts) > 40
    assert towards["away"] == towards["left"] == towards["right"] == 0
    # With a known velocity every motion caption says where it goes.
    assert all(_any(t, ("left", "right", "upwards", "downwards")) for t in _draws(
        duck, {"object_velocity_mps": [0.05, 0.1, -0.2]}, "motion", 100))
    unknown = _draws(duck, {}, "motion", 50)
    assert not any(_any(t, ("left", "right", "upwards", "downwards")) for t in unknown)


def test_texture_follows_material_and_press():
    wood = _draws(class_by_name("wooden bunny"), {"tactile_press_mm": 1.9}, "texture", 200)
    assert any(_any(t, ("rough", "coarse")) for t in wood)
    assert not any(_any(t, ("smooth", "slick", "glassy", "lightly", "gently")) for t in wood)
    assert any(_any(t, ("firmly", "deeply")) for t in wood)
    metal = _draws(class_by_name("metal bunny"), {"tactile_press_mm": 0.7}, "texture", 200)
    assert any(_any(t, ("smooth", "slick", "glassy")) for t in metal)
    assert not any(_any(t, ("rough", "coarse", "firmly", "deeply")) for t in metal)


def test_geometry_size_in_cm():
    texts = _draws(class_by_name("plastic cone"), {"size_m": 0.123}, "geometry", 150)
    sized = [t for t in texts if "cm" in t]
    assert sized and all("12 cm tall" in t for t in sized)
    assert any(_any(t, ("pointed tip", "point")) for t in texts)


def test_partial_captions_rate(samples):
    rng = np.random.default_rng(5)
    for style in STYLES:
        kinds = []
        for i in range(500):
            s = samples[int(rng.integers(len(samples)))]
            obj = CLASSES[s.class_index]
            kinds.append(styled_caption_kind(
                styled_caption(obj, s.nuisance, style, np.random.default_rng([i, 3])), obj))
        p_shape, p_mat = PARTIAL_P[style]
        assert "none" not in kinds, style
        assert abs(kinds.count("shape") / 500 - p_shape) < 0.06, (style, kinds.count("shape"))
        assert abs(kinds.count("material") / 500 - p_mat) < 0.06, (style, kinds.count("material"))


@pytest.mark.parametrize("nuisance", [None, {}, {"size_m": 0.1},
                                      {"size_m": "big", "object_velocity_mps": [1.0, 2.0],
                                       "albedo_rgb": None, "object_c": float("nan"),
                                       "tactile_press_mm": [1.0, 2.0]}])
def test_missing_or_bad_nuisance_keys_fall_back(nuisance):
    for obj in (class_by_name("plastic teddy bear"), class_by_name("metal torus")):
        for style in STYLES:
            texts = _draws(obj, nuisance, style, 40)
            assert all(t and "{" not in t and "  " not in t for t in texts)
            assert all(styled_caption_kind(t, obj) != "none" for t in texts)
    plastic = _draws(class_by_name("plastic duck"), {}, "appearance", 60)
    assert not any(_any(t, COLOUR_WORDS) for t in plastic)  # hue unknown: no colour word
    heat = _draws(class_by_name("plastic duck"), nuisance, "heat", 60)
    assert all(_any(t, TEMPERATURE_WORDS) for t in heat)


def test_style_prompts():
    assert style_prompts("appearance") == tuple(PROMPT_TEMPLATES)
    for style in STYLES:
        prompts = style_prompts(style)
        assert len(prompts) >= 3 and all(p.count("{}") == 1 for p in prompts), style
        assert all(p == p.lower() for p in prompts)
        filled = label_prompts(["orange mug"], prompts)["orange mug"]
        assert len(filled) == len(prompts)
    assert "the sound of a {} being tapped." in style_prompts("sound")
    assert "a thermal image of a {}." in style_prompts("heat")
    with pytest.raises(ValueError):
        style_prompts("smell")
