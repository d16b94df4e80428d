"""Caption corpora in several styles, one per specialist space (OmniBind seeds 001/003 analogue).

Why styles exist
----------------
OmniBind binds several pre-trained spaces (image-text, audio-text, 3D-text, ...) with learned
routers. Each specialist's text encoder was trained on its own caption corpus (COCO-style image
captions, AudioCaps-style sound captions, Cap3D-style shape captions), and the text router is
taught which corpus a caption comes from by the decoupling loss L_dec (seed 001, Eq. 6: a binary
cross-entropy between the router's per-space weights and the one-hot source space of the caption).
L_dec only has something to learn if the corpora *differ in style*: a sound caption talks about
clangs and pitch, a thermal caption about warmth, a point-cloud caption about centimetres and
handles. Our CPU analogue trains small specialist spaces on the simulated world, each on one of
the corpora drawn here, and then binds them the same way.

Which fact each style uses (from the catalog and the sample's ``nuisance`` dict)
------------------------------------------------------------------------------
========== =========== ======================================================================
style      modality    facts
========== =========== ======================================================================
appearance image       colour name of ``albedo_rgb`` (plastic hue varies), finish from the
                       material's ``specular``, size word from ``size_m``, dim light from
                       ``light_ambient``
sound      audio       impact sound class from ``decay_s`` / ``base_freq_hz`` (ringing clang,
                       dull knock, dry click), pitch from ``size_m`` (the fundamental scales with
                       1/size: small is high-pitched)
geometry   point_cloud shape parts (handle, hole, tip, ears), extent in cm from ``size_m``, scan
                       range ``lidar_distance_m``, point density ``lidar_object_points``
heat       thermal     ``object_c - ambient_c`` (warmer / cooler / room temperature, degrees),
                       how it looks: ``apparent_object_c - ambient_c`` and low ``emissivity``
                       (polished metal mirrors the colder room)
motion     event       direction of ``object_velocity_mps`` projected on the camera's image plane
                       (camera at azimuth 0, elevation ``camera_elevation_deg``), speed, spin
                       from ``object_yaw_rate_rps``, silhouette words
texture    tactile     material ``texture`` / ``roughness_mm`` / ``hardness``, press depth
                       ``tactile_press_mm``, contact size ``tactile_contact_area_mm2``
========== =========== ======================================================================

Like :mod:`omnibind_ros.sim.text`, a caption sometimes names only the shape or only the material
(:data:`PARTIAL_P`, per style: sensors that see material mostly drop the shape and vice versa).
The modality's own perceptual words stay in partial captions (a shape-only sound caption still
says "ringing clang"); only the *name* of the other attribute is dropped. A missing nuisance key
never fails: templates that need the missing fact are skipped and class-level words are used.

The word lists and templates themselves live in :mod:`.caption_vocab`.
"""
from __future__ import annotations

import colorsys
import math
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from omnibind_ros.sim.catalog import ObjectClass
from omnibind_ros.sim.text import (
    MATERIAL_ADJECTIVES,
    MATERIAL_NOUNS,
    SHAPE_SYNONYMS,
    _fix_articles,
)

from .caption_vocab import (
    COLOUR_WORDS,
    EXTENT,
    GEOMETRY_PARTS,
    GLOW,
    MOTION_VERBS,
    MOTION_WORDS,
    OUTLINE_NOUNS,
    PITCH_WORDS,
    PROMPTS,
    REFLECTIVE,
    SHAPED,
    SIZE_LARGE_M,
    SIZE_SMALL_M,
    SOUND_ADJS,
    SOUND_DECAY,
    SOUND_NOUNS,
    SOUND_WORDS,
    TEMPERATURE_WORDS,
    TEMPLATES,
    TEXTURE_PHRASES,
    TEXTURE_WORDS,
    WARM_ADJ,
    WARMTH,
)

__all__ = ["COLOUR_WORDS", "GEOMETRY_PARTS", "MOTION_WORDS", "PARTIAL_P", "PITCH_WORDS",
           "SHAPED", "SOUND_NOUNS", "SOUND_WORDS", "STYLES", "STYLE_MODALITY",
           "TEMPERATURE_WORDS", "TEXTURE_WORDS", "caption_corpus", "style_prompts",
           "styled_caption", "styled_caption_kind"]

STYLES: tuple[str, ...] = ("appearance", "sound", "geometry", "heat", "motion", "texture")
#: The modality whose specialist space each caption style trains.
STYLE_MODALITY: dict[str, str] = {"appearance": "image", "sound": "audio",
                                  "geometry": "point_cloud", "heat": "thermal",
                                  "motion": "event", "texture": "tactile"}

#: (P(shape-only), P(material-only)) per style. Material sensors (sound, heat, touch) rarely
#: see the shape, geometry sensors (LiDAR, events) rarely the material.
PARTIAL_P: dict[str, tuple[float, float]] = {
    "appearance": (0.15, 0.15), "sound": (0.10, 0.25), "geometry": (0.25, 0.10),
    "heat": (0.10, 0.25), "motion": (0.25, 0.10), "texture": (0.10, 0.25)}

_FORMATTER = string.Formatter()
_SPACES = re.compile(r"\s+")
_SPACE_PUNCT = re.compile(r"\s+([,:;])")


# ============================================================================== public API
def styled_caption(obj: ObjectClass, nuisance: Mapping[str, Any] | None, style: str,
                   rng: np.random.Generator) -> str:
    """Draw one lower-case caption of ``obj`` in ``style`` (no trailing period).

    Parameters
    ----------
    obj : the object's class (shape and material, with their physical constants).
    nuisance : the sample's per-instance facts (``Sample.nuisance``); missing keys fall back to
        class-level words, ``None`` means none are known.
    style : one of :data:`STYLES`.
    rng : source of every random choice (kind of caption, template, synonyms).

    Returns
    -------
    str
        e.g. "the bright ringing clang of a small metal cup being tapped". With the
        probabilities :data:`PARTIAL_P` it names only the shape or only the material.
    """
    full, shape_only, material_only = TEMPLATES[_check_style(style)]
    p_shape, p_material = PARTIAL_P[style]
    u = rng.random()
    templates = (shape_only if u < p_shape else material_only if u < p_shape + p_material
                 else full)
    words = _WORDS[style](obj, nuisance or {}, rng)
    words.update(_common_words(obj, rng))
    usable = [t for t in templates if all(words.get(f) is not None for f in _fields(t))]
    template = usable[int(rng.integers(len(usable)))]
    return _clean(template.format(**{f: words[f] for f in _fields(template)}))


def caption_corpus(objects: Sequence[ObjectClass], nuisances: Sequence[Mapping[str, Any] | None],
                   seeds: Sequence[int], style: str) -> list[str]:
    """Captions in ``style`` for a list of samples, one each, deterministic.

    Caption ``i`` uses ``np.random.default_rng([seeds[i], STYLES.index(style), 7])``, so it
    depends only on (sample seed, style) and can be regenerated alone.
    """
    k = STYLES.index(_check_style(style))
    if not len(objects) == len(nuisances) == len(seeds):
        raise ValueError(f"objects, nuisances and seeds differ in length: {len(objects)}, "
                         f"{len(nuisances)}, {len(seeds)}")
    return [styled_caption(o, n, style, np.random.default_rng([int(s), k, 7]))
            for o, n, s in zip(objects, nuisances, seeds, strict=True)]


def style_prompts(style: str) -> tuple[str, ...]:
    """Zero-shot label prompt templates of ``style``, each with one ``{}`` for the class name.

    Pass them to :func:`omnibind_ros.sim.text.label_prompts` (which fixes "a"/"an").
    """
    return PROMPTS[_check_style(style)]


def styled_caption_kind(text: str, obj: ObjectClass) -> str:
    """What a styled caption of ``obj`` names: "full", "shape", "material" or "none".

    Matches the shape synonyms and "-shaped" adjectives, and the material adjectives and nouns.
    """
    shapes = (SHAPE_SYNONYMS.get(obj.shape.name, (obj.shape.name,))
              + SHAPED.get(obj.shape.name, (f"{obj.shape.name}-shaped",)))
    mats = (MATERIAL_ADJECTIVES.get(obj.material.name, (obj.material.name,))
            + MATERIAL_NOUNS.get(obj.material.name, (obj.material.name,)))
    names_shape = any(_has_word(text, s) for s in shapes)
    names_material = any(_has_word(text, m) for m in mats)
    if names_shape and names_material:
        return "full"
    return "shape" if names_shape else "material" if names_material else "none"


# ============================================================================== word makers
def _common_words(obj: ObjectClass, rng: np.random.Generator) -> dict[str, str]:
    name = obj.shape.name
    return {
        "shape": _pick(SHAPE_SYNONYMS.get(name, (name,)), rng),
        "shaped": _pick(SHAPED.get(name, (f"{name}-shaped",)), rng),
        "mat": _pick(MATERIAL_ADJECTIVES.get(obj.material.name, (obj.material.name,)), rng),
        "noun": _pick(MATERIAL_NOUNS.get(obj.material.name, (obj.material.name,)), rng),
    }


def _size_word(nuisance: Mapping[str, Any], rng: np.random.Generator) -> str:
    size = _num(nuisance, "size_m")
    if size is None:
        return ""
    if size < SIZE_SMALL_M:
        return _pick(("small ", "little ", "small ", ""), rng)
    if size > SIZE_LARGE_M:
        return _pick(("large ", "big ", ""), rng)
    return ""


def _appearance_words(obj: ObjectClass, nu: Mapping[str, Any],
                      rng: np.random.Generator) -> dict[str, str | None]:
    rgb = _vec(nu, "albedo_rgb", 3)
    if rgb is None and not obj.material.hue_random:
        rgb = np.asarray(obj.material.base_rgb, float)  # class-level colour
    colour = _pick(_colour_names(rgb), rng) + " " if rgb is not None else ""
    if rng.random() < 0.2:
        colour = ""  # people do not always say the colour
    spec = obj.material.specular
    finish = _pick(("shiny", "gleaming", "glossy") if spec >= 0.7 else ("glossy", "satin")
                   if spec >= 0.3 else ("matte", "dull-finished"), rng)
    ambient = _num(nu, "light_ambient")
    light = ""
    if ambient is not None and ambient < 0.25 and rng.random() < 0.6:
        light = _pick((" in dim light", " in a dark room"), rng)
    elif ambient is not None and ambient > 0.4 and rng.random() < 0.6:
        light = _pick((" in bright light", " in a well-lit room"), rng)
    return {"colour": colour, "finish": finish, "light": light,
            "size": _size_word(nu, rng)}


def _colour_names(rgb: np.ndarray) -> tuple[str, ...]:
    r, g, b = (float(np.clip(c, 0.0, 1.0)) for c in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h *= 360.0
    if s < 0.2:
        return (("white",) if v > 0.85 else ("silver", "grey") if v > 0.6 else ("grey",)
                if v > 0.25 else ("black",))
    if v < 0.2:
        return ("black",)
    if h < 15 or h >= 345:
        return ("red",)
    if h < 42:
        return ("brown",) if v < 0.65 else ("orange",)
    if h < 70:
        return ("yellow",)
    if h < 160:
        return ("green",)
    if h < 195:
        return ("teal", "turquoise")
    if h < 255:
        return ("blue",)
    if h < 290:
        return ("purple",)
    return ("pink", "magenta")


def _sound_words(obj: ObjectClass, nu: Mapping[str, Any],
                 rng: np.random.Generator) -> dict[str, str | None]:
    m = obj.material
    kind = "ringing" if m.decay_s >= 0.5 else "knock" if m.base_freq_hz < 1200 else "click"
    size = _num(nu, "size_m")
    pitch = None
    if size is not None:  # fundamental ~ 1/size: small objects sound high
        band = "high" if size < 0.12 else "low" if size > 0.155 else "mid"
        pitch = _pick(PITCH_WORDS[band], rng)
    return {"sound": _pick(SOUND_NOUNS[kind], rng), "adj": _pick(SOUND_ADJS[kind], rng),
            "decay": _pick(SOUND_DECAY[kind], rng), "pitch": pitch,
            "size": _size_word(nu, rng)}


def _geometry_words(obj: ObjectClass, nu: Mapping[str, Any],
                    rng: np.random.Generator) -> dict[str, str | None]:
    name = obj.shape.name
    size = _num(nu, "size_m")
    size = obj.shape.size_m if size is None else size  # class-level nominal extent
    points = _num(nu, "lidar_object_points")
    density = ("dense" if points > 500 else "sparse" if points < 250 else "medium-density"
               ) if points is not None else _pick(("lidar", "depth", "3d"), rng)
    dist = _num(nu, "lidar_distance_m")
    scan_range = ""
    if dist is not None and rng.random() < 0.7:
        scan_range = _pick((f" from {dist:.1f} m away", f" at a range of {dist:.1f} m"), rng)
    return {"parts": _pick(GEOMETRY_PARTS.get(name, (f"the outline of a {name}",)), rng),
            "cm": f"{size * 100:.0f}", "extent": EXTENT.get(name, "across"),
            "density": density, "range": scan_range, "size": _size_word(nu, rng)}


def _heat_words(obj: ObjectClass, nu: Mapping[str, Any],
                rng: np.random.Generator) -> dict[str, str | None]:
    m = obj.material
    obj_c, amb_c = _num(nu, "object_c"), _num(nu, "ambient_c")
    delta = obj_c - amb_c if obj_c is not None and amb_c is not None else m.temperature_offset_c
    band = ("hot" if delta >= 4.0 else "warm" if delta >= 1.0 else "ambient" if delta > -1.0
            else "cool" if delta > -3.0 else "cold")
    eps = _num(nu, "emissivity")
    eps = m.emissivity if eps is None else eps
    apparent = _num(nu, "apparent_object_c")
    if apparent is not None and amb_c is not None:
        shown = apparent - amb_c
    else:  # class level: a low-emissivity surface shows the colder reflected room
        shown = delta if eps > 0.5 else -5.0
    glow = "bright" if shown > 1.0 else "dark" if shown < -1.0 else "even"
    rel = None
    if obj_c is not None and amb_c is not None and round(abs(delta)) >= 1:
        n = round(abs(delta))
        rel = f"{n} degree{'s' if n > 1 else ''} {'above' if delta > 0 else 'below'} ambient"
    return {"warm": _pick(WARM_ADJ[band], rng), "warmth": _pick(WARMTH[band], rng),
            "glow": _pick(GLOW[glow], rng),
            "deg": f"{obj_c:.0f}" if obj_c is not None else None,
            "rel": rel or _pick(WARMTH[band], rng),
            "reflect": _pick(REFLECTIVE, rng) if eps < 0.5 else None,
            "size": _size_word(nu, rng)}


def _motion_words(obj: ObjectClass, nu: Mapping[str, Any],
                  rng: np.random.Generator) -> dict[str, str | None]:
    vel = _vec(nu, "object_velocity_mps", 3)
    direction = speed = None
    if vel is not None:
        elev = math.radians(_num(nu, "camera_elevation_deg") or 20.0)
        # The sim's camera orbits at azimuth 0: right = +y, up = (-sin e, 0, cos e),
        # forward = -(cos e, 0, sin e) (see Camera.basis).
        right = vel[1]
        up = -math.sin(elev) * vel[0] + math.cos(elev) * vel[2]
        fwd = -math.cos(elev) * vel[0] - math.sin(elev) * vel[2]
        direction = _direction(right, up, fwd, rng)
        mps = float(np.linalg.norm(vel))
        speed = _pick(("slowly", "gently") if mps < 0.15 else ("quickly", "fast", "rapidly")
                      if mps > 0.25 else ("steadily", "smoothly"), rng)
    rate = _num(nu, "object_yaw_rate_rps")
    spin = ""
    if rate is not None and abs(rate) >= 0.3 and rng.random() < 0.75:
        sense = "counter-clockwise" if rate > 0 else "clockwise"  # yaw about +z, seen from above
        how = (_pick(("spinning", "rotating"), rng) if abs(rate) > 0.9
               else _pick(("slowly turning", "turning"), rng))
        spin = f" while {how} {sense}"
    elif rate is not None and abs(rate) < 0.3 and rng.random() < 0.3:
        spin = " without turning"
    # {nodir} marks the templates used only when the direction is unknown.
    return {"direction": direction, "nodir": "" if direction is None else None,
            "speed": speed, "spin": spin, "verb": _pick(MOTION_VERBS, rng),
            "outline": _pick(OUTLINE_NOUNS, rng), "size": _size_word(nu, rng)}


def _direction(right: float, up: float, fwd: float, rng: np.random.Generator) -> str:
    lateral = math.hypot(right, up)
    if abs(fwd) > 2.0 * lateral:
        return _pick(("towards the camera", "closer") if fwd < 0 else
                     ("away from the camera", "into the distance"), rng)
    horiz = "to the right" if right > 0 else "to the left"
    vert = "upwards" if up > 0 else "downwards"
    if abs(up) < 0.4 * abs(right):
        return horiz
    if abs(right) < 0.4 * abs(up):
        return vert
    return f"{'up' if up > 0 else 'down'} and {horiz}"


def _texture_words(obj: ObjectClass, nu: Mapping[str, Any],
                   rng: np.random.Generator) -> dict[str, str | None]:
    m = obj.material
    rough = _pick(("rough", "coarse") if m.roughness_mm >= 0.02 else
                  ("slightly bumpy", "finely textured") if m.roughness_mm >= 0.005 else
                  ("smooth", "slick", "glassy"), rng)
    hard = _pick(("hard", "rigid", "unyielding") if m.hardness >= 0.9 else
                 ("firm", "solid") if m.hardness >= 0.65 else
                 ("slightly springy", "slightly soft", "yielding"), rng)
    press_mm = _num(nu, "tactile_press_mm")
    press = None
    if press_mm is not None:
        press = _pick(("lightly", "gently") if press_mm < 1.0 else ("firmly", "deeply")
                      if press_mm > 1.6 else ("steadily", "moderately"), rng)
    depth = _num(nu, "tactile_max_indentation_mm")
    depth = press_mm if depth is None else depth
    area = _num(nu, "tactile_contact_area_mm2")
    contact = ""
    if area is not None and rng.random() < 0.7:
        contact = (_pick((" over a broad flat patch", " across a wide contact"), rng)
                   if area >= 150 else _pick((" on a tight curve", " at a small contact point"),
                                             rng) if area < 60 else "")
    return {"rough": rough, "hard": hard, "press": press,
            "tex": _pick(TEXTURE_PHRASES.get(m.texture, ("an even surface",)), rng),
            "depth": f"{depth:.1f}" if depth is not None else None, "contact": contact}


_WORDS = {"appearance": _appearance_words, "sound": _sound_words, "geometry": _geometry_words,
          "heat": _heat_words, "motion": _motion_words, "texture": _texture_words}


# ============================================================================== helpers
def _check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"unknown caption style {style!r}; known: {', '.join(STYLES)}")
    return style


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in _FORMATTER.parse(template) if f]


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _num(nu: Mapping[str, Any], key: str) -> float | None:
    try:
        v = float(nu[key])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _vec(nu: Mapping[str, Any], key: str, n: int) -> np.ndarray | None:
    try:
        v = np.asarray(nu[key], dtype=float).reshape(-1)
    except (KeyError, TypeError, ValueError):
        return None
    return v if v.size == n and np.all(np.isfinite(v)) else None


def _has_word(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def _clean(text: str) -> str:
    text = _SPACE_PUNCT.sub(r"\1", _SPACES.sub(" ", text)).strip().lower()
    return _fix_articles(text)
