"""Text preprocessing: the settings the text encoder needs, and a whitespace normaliser.

Tokenisation belongs to the text model (its tokenizer files ship with the bundle); what lives
here is what must be identical in training and at runtime before the tokenizer runs: Unicode
and whitespace normalisation, optional lower-casing, and the label prompt templates.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from omnibind_ros.core.errors import EmptyInputError, InvalidDtypeError
from omnibind_ros.core.preprocess import _config as cfg

__all__ = ["TextPreprocessConfig", "TextPreprocessor", "fix_articles", "label_prompt",
           "normalize_text"]

_WHITESPACE = re.compile(r"\s+")
_ARTICLE = re.compile(r"\b([Aa])n? (?=(\w))")


def fix_articles(text: str) -> str:
    """Make each indefinite article agree with the following word (vowel letter rule):
    "a apple" -> "an apple", "an mug" -> "a mug"."""
    def repl(m: re.Match[str]) -> str:
        article = "an" if m.group(2).lower() in "aeiou" else "a"
        return (article.capitalize() if m.group(1) == "A" else article) + " "
    return _ARTICLE.sub(repl, text)


def label_prompt(template: str, label: str) -> str:
    """One label prompt: ``template`` with its ``{}`` replaced by ``label``, articles agreeing.

    Training (the cached label embeddings of every bundle) and the runtime (labels replaced at
    runtime) both build prompts here, so a label embedded on either side is the same vector.
    """
    return fix_articles(template.replace("{}", label))


@dataclass(frozen=True)
class TextPreprocessConfig(cfg.ConfigMixin):
    """Text settings stored in the bundle.

    Attributes
    ----------
    tokenizer : name of the tokenizer (resolved by the text model; the default is the
        all-MiniLM-L6-v2 WordPiece tokenizer of the default text teacher).
    max_length : tokens per text after tokenisation (longer texts are truncated by the model).
    lowercase : lower-case the text (the default tokenizer is uncased anyway).
    prompt_templates : templates for label prompts, each with one ``{}`` for the label; label
        embeddings average over them.
    """

    tokenizer: str = "all-MiniLM-L6-v2"
    max_length: int = 128
    lowercase: bool = True
    prompt_templates: tuple[str, ...] = ("a photo of a {}.", "a {}.")

    def __post_init__(self) -> None:
        if not isinstance(self.tokenizer, str) or not self.tokenizer.strip():
            raise cfg.fail(self, f"tokenizer must be a non-empty string, got {self.tokenizer!r}")
        templates = self.prompt_templates
        if isinstance(templates, str) or not isinstance(templates, list | tuple) or not templates:
            raise cfg.fail(self, f"prompt_templates must be a non-empty list, got {templates!r}")
        for template in templates:
            if not isinstance(template, str) or template.count("{}") != 1:
                raise cfg.fail(self, f"each prompt template needs exactly one '{{}}', got "
                                     f"{template!r}")
        cfg.normalise_fields(
            self, prompt_templates=tuple(templates),
            max_length=cfg.as_int(self, "max_length", minimum=1),
            lowercase=cfg.as_bool(self, "lowercase"),
        )


def normalize_text(text: str, config: TextPreprocessConfig) -> str:
    """Normalise a text before tokenisation.

    Parameters
    ----------
    text : any string (e.g. ``std_msgs/String.data``).
    config : the preprocessing config.

    Returns
    -------
    The NFC-normalised text with whitespace runs collapsed to one space, stripped, and
    lower-cased when ``config.lowercase``.

    Raises
    ------
    InvalidDtypeError
        ``text`` is not a str.
    EmptyInputError
        Nothing but whitespace is left.
    """
    if not isinstance(text, str):
        raise InvalidDtypeError(f"text must be a str, got {type(text).__name__}")
    if config.lowercase:  # before NFC: lower() can emit decomposed characters
        text = text.lower()
    text = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()
    if not text:
        raise EmptyInputError("text is empty or whitespace only")
    return text


class TextPreprocessor:
    """Callable text normaliser; ``__call__`` returns a str (the tokenizer runs in the model)."""

    #: Text has no fixed array shape before tokenisation.
    output_shape = None

    def __init__(self, config: TextPreprocessConfig | None = None) -> None:
        self.config = config or TextPreprocessConfig()

    def __call__(self, text: str) -> str:
        """Return :func:`normalize_text` of ``text``."""
        return normalize_text(text, self.config)

    def prompts(self, label: str) -> list[str]:
        """Return the label's prompts, one per template, e.g. "a photo of a wooden mug."."""
        label = normalize_text(label, self.config)
        return [label_prompt(template, label) for template in self.config.prompt_templates]
