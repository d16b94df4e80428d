"""Shared machinery of the ``*PreprocessConfig`` dataclasses: dict round-trip and validation.

Configs are stored in ``bundle.yaml``, so ``to_dict`` emits only YAML/JSON-plain values (tuples
become lists) and ``from_dict`` accepts lists back, rejecting keys it does not know: a typo in a
bundle must fail loudly instead of silently running with a default.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from omnibind_ros.core.errors import PreprocessConfigError

C = TypeVar("C", bound="ConfigMixin")

#: Resize modes shared by the image-like modalities.
RESIZE_MODES = ("crop", "stretch")
#: Interpolation names accepted by :func:`omnibind_ros.core.preprocess._image_ops.fit_square`.
INTERPOLATIONS = ("auto", "nearest", "linear", "cubic", "area")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


class ConfigMixin:
    """``to_dict``/``from_dict`` for frozen dataclasses; subclasses validate in __post_init__."""

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a dict of YAML-plain values (tuples as lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None) -> C:
        """Build the config from a mapping; missing keys take their defaults.

        Raises
        ------
        PreprocessConfigError
            ``data`` is not a mapping, has keys the config does not define, or holds values the
            config rejects.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PreprocessConfigError(
                f"{cls.__name__}.from_dict expects a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise PreprocessConfigError(
                f"unknown key(s) for {cls.__name__}: {', '.join(unknown)}; "
                f"valid keys: {', '.join(names)}")
        try:
            return cls(**dict(data))
        except PreprocessConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise PreprocessConfigError(f"invalid {cls.__name__}: {exc}") from exc

    def _set(self, name: str, value: Any) -> None:
        # Frozen dataclasses need object.__setattr__ to normalise fields in __post_init__.
        object.__setattr__(self, name, value)


def fail(config: object, message: str) -> PreprocessConfigError:
    """Return a config error prefixed with the config's class name (for ``raise fail(...)``)."""
    return PreprocessConfigError(f"{type(config).__name__}: {message}")


def as_int(config: object, name: str, minimum: int | None = None) -> int:
    """Validate ``config.name`` as an integer (bools rejected) ``>= minimum``; return it."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise fail(config, f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise fail(config, f"{name} must be >= {minimum}, got {value}")
    return value


def as_float(config: object, name: str, low: float | None = None, high: float | None = None,
             low_open: bool = False) -> float:
    """Validate ``config.name`` as a finite float in [low, high] (or (low, high] if low_open)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise fail(config, f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise fail(config, f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise fail(config, f"{name} must be <= {high}, got {value}")
    return value


def as_float_tuple(config: object, name: str, length: int, positive: bool = False
                   ) -> tuple[float, ...]:
    """Validate ``config.name`` as a sequence of ``length`` finite floats; return a tuple."""
    value = getattr(config, name)
    if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != length:
        raise fail(config, f"{name} must be a sequence of {length} numbers, got {value!r}")
    items = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise fail(config, f"{name} must hold finite numbers, got {value!r}")
        if positive and v <= 0:
            raise fail(config, f"{name} must hold numbers > 0, got {value!r}")
        items.append(float(v))
    return tuple(items)


def as_choice(config: object, name: str, choices: tuple[str, ...]) -> str:
    """Validate ``config.name`` as one of ``choices``; return it."""
    value = getattr(config, name)
    if value not in choices:
        raise fail(config, f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def as_bool(config: object, name: str) -> bool:
    """Validate ``config.name`` as a bool (YAML booleans; 0/1 are not accepted)."""
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise fail(config, f"{name} must be true or false, got {value!r}")
    return value


def normalise_fields(config: ConfigMixin, **validated: Any) -> None:
    """Store validated (coerced) values back on a frozen config."""
    for name, value in validated.items():
        config._set(name, value)
