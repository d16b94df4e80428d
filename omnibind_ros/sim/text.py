"""Captions for simulated objects, and label prompts for zero-shot label embeddings.

Captions are the text teacher's training signal and a text "sensor" at runtime (an operator's
description). Like a real operator they are varied and sometimes incomplete: with probability
:data:`SHAPE_ONLY_P` a caption names only the shape, with :data:`MATERIAL_ONLY_P` only the
material, so text, too, does not always determine the class.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from omnibind_ros.core.preprocess.text import fix_articles as _fix_articles
from omnibind_ros.sim.catalog import ObjectClass

#: Probability that a caption names only the shape (our choice: frequent enough to matter).
SHAPE_ONLY_P = 0.15
#: Probability that a caption names only the material.
MATERIAL_ONLY_P = 0.15

#: Nouns a person may use for each shape (first entry = the catalog name). Unknown shapes fall
#: back to their catalog name, so adding a shape to the catalog needs no change here.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "mug": ("mug", "cup", "coffee mug"),
    "duck": ("duck", "toy duck", "duck figurine"),
    "bunny": ("bunny", "rabbit", "rabbit figurine"),
    "torus": ("torus", "ring", "donut-shaped ring"),
    "cone": ("cone", "traffic cone", "pylon"),
    "teddy bear": ("teddy bear", "teddy", "bear figurine"),
}
#: Adjectives for each material, and the noun used in "made of <noun>".
MATERIAL_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "metal": ("metal", "metallic", "steel", "aluminium"),
    "wooden": ("wooden", "wood"),
    "plastic": ("plastic",),
}
MATERIAL_NOUNS: dict[str, tuple[str, ...]] = {
    "metal": ("metal", "steel"),
    "wooden": ("wood",),
    "plastic": ("plastic",),
}
_SIZES = ("", "", "small ", "little ", "")

# {size} {mat} {shape} {noun}: "a"/"an" is fixed afterwards by _fix_articles.
FULL_TEMPLATES: tuple[str, ...] = (
    "a photo of a {size}{mat} {shape}",
    "there is a {size}{mat} {shape} on the table",
    "a {mat} {shape}",
    "the robot is looking at a {size}{mat} {shape}",
    "a {shape} made of {noun}",
    "a close-up of a {mat} {shape}",
    "an object: {mat} {shape}",
    "in front of the sensor there is a {size}{shape} made of {noun}",
)
SHAPE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {size}{shape}",
    "there is a {shape} on the table",
    "something shaped like a {shape}",
    "the robot is looking at a {shape}",
)
MATERIAL_TEMPLATES: tuple[str, ...] = (
    "a {mat} object",
    "something made of {noun}",
    "a photo of a {size}{mat} thing",
    "there is an object made of {noun} on the table",
)

#: Default prompt templates for label embeddings (CLIP's "a photo of a {}." family).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a rendering of a {}.",
    "a photo of a small {}.",
    "there is a {} on the table.",
    "a {}.",
)



def caption(obj: ObjectClass, rng: np.random.Generator) -> str:
    """Draw one caption describing ``obj``.

    Parameters
    ----------
    obj : the object's class (its shape and material names are looked up in the synonym tables).
    rng : source of the random choices (kind of caption, template, synonyms, size word).

    Returns
    -------
    str
        A lower-case caption without a trailing period, e.g. "a photo of a small wooden duck".
        With probability :data:`SHAPE_ONLY_P` it names only the shape, with
        :data:`MATERIAL_ONLY_P` only the material.
    """
    u = rng.random()
    if u < SHAPE_ONLY_P:
        templates = SHAPE_TEMPLATES
    elif u < SHAPE_ONLY_P + MATERIAL_ONLY_P:
        templates = MATERIAL_TEMPLATES
    else:
        templates = FULL_TEMPLATES
    template = templates[rng.integers(len(templates))]
    words = {
        "shape": _pick(SHAPE_SYNONYMS.get(obj.shape.name, (obj.shape.name,)), rng),
        "mat": _pick(MATERIAL_ADJECTIVES.get(obj.material.name, (obj.material.name,)), rng),
        "noun": _pick(MATERIAL_NOUNS.get(obj.material.name, (obj.material.name,)), rng),
        "size": _pick(_SIZES, rng),
    }
    return _fix_articles(template.format(**words))


def caption_kind(text: str, obj: ObjectClass) -> str:
    """Classify a caption of ``obj`` as "full", "shape" or "material" (what it names).

    Used by tests and data-set statistics; matches any synonym of the object's attributes.
    """
    names_shape = any(_has_word(text, s) for s in SHAPE_SYNONYMS.get(obj.shape.name,
                                                                     (obj.shape.name,)))
    mats = (MATERIAL_ADJECTIVES.get(obj.material.name, (obj.material.name,))
            + MATERIAL_NOUNS.get(obj.material.name, (obj.material.name,)))
    names_material = any(_has_word(text, m) for m in mats)
    if names_shape and names_material:
        return "full"
    return "shape" if names_shape else "material" if names_material else "none"


def label_prompts(class_names: Iterable[str],
                  templates: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Prompts for each class name, to embed with the text encoder and average per class.

    Parameters
    ----------
    class_names : e.g. :data:`omnibind_ros.sim.catalog.CLASS_NAMES`.
    templates : format strings with one ``{}``; default :data:`PROMPT_TEMPLATES`.

    Returns
    -------
    dict[str, list[str]]
        ``{name: [template.format(name) for template in templates]}`` in input order, with
        "a"/"an" agreeing with the next word ("an orange mug").
    """
    templates = tuple(PROMPT_TEMPLATES if templates is None else templates)
    if not templates:
        raise ValueError("need at least one prompt template")
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"prompt template {t!r} must contain exactly one '{{}}'")
    return {name: [_fix_articles(t.format(name)) for t in templates] for name in class_names}


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _has_word(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text) is not None

