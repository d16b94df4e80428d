"""Captions and label prompts."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from omnibind_ros.sim.catalog import CLASS_NAMES, CLASSES, MATERIALS, SHAPES, ObjectClass, Shape
from omnibind_ros.sim.text import (
    MATERIAL_ONLY_P,
    PROMPT_TEMPLATES,
    SHAPE_ONLY_P,
    caption,
    caption_kind,
    label_prompts,
)


def test_caption_is_deterministic_from_rng() -> None:
    a = [caption(c, np.random.default_rng(11)) for c in CLASSES]
    b = [caption(c, np.random.default_rng(11)) for c in CLASSES]
    assert a == b and all(isinstance(s, str) and s for s in a)


def test_caption_kinds_follow_probabilities_and_never_lie() -> None:
    rng = np.random.default_rng(0)
    kinds: Counter[str] = Counter()
    texts = set()
    n = 3600
    for i in range(n):
        obj = CLASSES[i % len(CLASSES)]
        text = caption(obj, rng)
        texts.add(text)
        kind = caption_kind(text, obj)
        kinds[kind] += 1
        # A caption never names another shape or another material (no wrong information).
        for other in CLASSES:
            if other.shape != obj.shape:
                assert caption_kind(text, other) not in ("full", "shape"), text
            if other.material != obj.material:
                assert caption_kind(text, other) not in ("full", "material"), text
    assert kinds["none"] == 0
    # Binomial std for p=0.15, n=3600 is ~0.006: allow 4 sigma.
    assert kinds["shape"] / n == pytest.approx(SHAPE_ONLY_P, abs=0.025)
    assert kinds["material"] / n == pytest.approx(MATERIAL_ONLY_P, abs=0.025)
    assert len(texts) > 200  # varied: templates x synonyms x sizes


def test_captions_use_synonyms_and_correct_articles() -> None:
    rng = np.random.default_rng(1)
    metal_mug = next(c for c in CLASSES if c.name == "metal mug")
    texts = {caption(metal_mug, rng) for _ in range(400)}
    joined = " | ".join(texts)
    assert "cup" in joined and "steel" in joined
    assert "an aluminium" in joined and "a aluminium" not in joined
    assert not any(" a a" in t or " an m" in t for t in texts)


def test_unknown_attributes_fall_back_to_catalog_names() -> None:
    obj = ObjectClass(0, Shape("kettle", "kettle.obj", "z", 0.2), MATERIALS[0])
    rng = np.random.default_rng(2)
    texts = [caption(obj, rng) for _ in range(50)]
    assert any("kettle" in t for t in texts)
    assert all(caption_kind(t, obj) in ("full", "shape", "material") for t in texts)


def test_label_prompts_default_and_custom() -> None:
    prompts = label_prompts(CLASS_NAMES)
    assert list(prompts) == list(CLASS_NAMES)
    assert all(len(v) == len(PROMPT_TEMPLATES) for v in prompts.values())
    assert prompts["wooden duck"][0] == "a photo of a wooden duck."
    custom = label_prompts(["orange mug", "mug"], ["a photo of a {}.", "{} on a desk"])
    assert custom == {"orange mug": ["a photo of an orange mug.", "orange mug on a desk"],
                      "mug": ["a photo of a mug.", "mug on a desk"]}


@pytest.mark.parametrize("templates", [[], ["no slot"], ["{} and {}"]])
def test_label_prompts_rejects_bad_templates(templates) -> None:
    with pytest.raises(ValueError):
        label_prompts(["mug"], templates)


def test_every_catalog_shape_has_a_caption_noun() -> None:
    rng = np.random.default_rng(3)
    for shape in SHAPES:
        obj = ObjectClass(0, shape, MATERIALS[1])
        assert any(caption_kind(caption(obj, rng), obj) in ("full", "shape") for _ in range(40))
