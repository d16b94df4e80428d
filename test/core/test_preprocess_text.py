"""Text preprocessing: normalisation and label prompts."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.errors import EmptyInputError, InvalidDtypeError, PreprocessConfigError
from omnibind_ros.core.preprocess.text import (
    TextPreprocessConfig,
    TextPreprocessor,
    normalize_text,
)


def test_whitespace_is_collapsed_and_case_folded():
    assert normalize_text("  A  Wooden\tMUG\n\n", TextPreprocessConfig()) == "a wooden mug"
    keep_case = TextPreprocessConfig(lowercase=False)
    assert normalize_text(" A\u00a0Mug ", keep_case) == "A Mug"  # no-break space is whitespace


def test_unicode_is_nfc_normalised():
    decomposed = "cafe\u0301"  # e + combining acute
    assert normalize_text(decomposed, TextPreprocessConfig()) == "caf\u00e9"


@pytest.mark.parametrize(("text", "error"), [
    ("", EmptyInputError), (" \n\t ", EmptyInputError), (None, InvalidDtypeError),
    (b"mug", InvalidDtypeError),
])
def test_bad_text_raises(text, error):
    with pytest.raises(error):
        TextPreprocessor()(text)


def test_prompts_fill_every_template_with_the_normalised_label():
    pre = TextPreprocessor(TextPreprocessConfig(prompt_templates=("a photo of a {}.", "{} {x}")))
    assert pre.prompts("  Wooden   Duck") == ["a photo of a wooden duck.", "wooden duck {x}"]


def test_template_without_placeholder_is_rejected():
    with pytest.raises(PreprocessConfigError, match="exactly one"):
        TextPreprocessConfig(prompt_templates=("a photo of {} and {}",))


@settings(max_examples=50, deadline=None)
@given(text=st.text(min_size=1, max_size=60).filter(lambda t: t.strip()))
def test_normalisation_is_idempotent_and_trimmed(text):
    config = TextPreprocessConfig()
    once = normalize_text(text, config)
    assert normalize_text(once, config) == once
    assert once == once.strip() and "  " not in once


def test_label_prompts_agree_between_training_and_runtime():
    """Training caches label embeddings from omnibind_ros.sim.text.label_prompts; the runtime
    re-embeds replaced labels with embed_labels: both fill templates through label_prompt, so
    "a {}" + "apple" is "an apple" on both sides (it was "a apple" at runtime)."""
    import numpy as np

    from omnibind_ros.core.backends.base import embed_labels
    from omnibind_ros.core.preprocess.text import label_prompt
    from omnibind_ros.sim.text import label_prompts

    assert label_prompt("a photo of a {}.", "apple") == "a photo of an apple."
    assert label_prompt("An {} on the table", "mug") == "A mug on the table"
    templates = ["a photo of a {}.", "a {} in front of the robot."]
    seen: list[str] = []

    class Recorder:
        def embed_text(self, texts):
            seen.extend(texts)
            return np.ones((len(texts), 4), np.float32)

    embed_labels(Recorder(), ["apple", "wooden mug", "orange"], templates)
    training = label_prompts(["apple", "wooden mug", "orange"], templates)
    assert seen == [p for name in ("apple", "wooden mug", "orange") for p in training[name]]
    assert "a photo of an apple." in seen and "an orange in front of the robot." in seen
