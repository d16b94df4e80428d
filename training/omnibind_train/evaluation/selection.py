"""Design choices decided on the validation split, never on the test split.

:func:`select_on_val` is the one place the evaluation code picks among options (e.g. the number
of CAD cross-fitting folds for stage II, ``cad.crossfit_folds``): it reads only the validation
scores; the test scores ride along so that the report shows them next to the decision, but they
cannot change it (a test in ``training/tests/test_fidelity_selection.py`` swaps them to check).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: The split every selection reads.
SELECTION_SPLIT = "val"


def select_on_val(scores: Mapping[Any, Mapping[str, float]], *, tolerance: float = 0.0,
                  prefer: Sequence[Any] | None = None, split: str = SELECTION_SPLIT,
                  ) -> dict[str, Any]:
    """Pick the option with the highest validation score.

    Parameters
    ----------
    scores : option -> ``{split: score}``; every option needs a finite score on ``split``
        (higher is better). Other splits (e.g. ``"test"``) are carried into the result only.
    tolerance : options within ``tolerance`` of the best validation score count as tied; the
        tie goes to the first of them in ``prefer`` order (e.g. the cheaper option), so a
        difference smaller than the noise does not decide.
    prefer : tie-break order (default: the order of ``scores``).
    split : the selection split; only ``"val"`` is accepted, the parameter exists to make the
        refusal explicit.

    Returns
    -------
    ``{"chosen", "split", "tolerance", "best_val", "tied", "margin", "scores"}``: ``tied`` the
    options within the tolerance, ``margin`` the chosen option's validation score minus the
    best other option's (None with one option), ``scores`` the input, as given.

    Raises
    ------
    ValueError
        ``split`` is not the validation split, no options, or an option without a finite
        validation score.
    """
    if split != SELECTION_SPLIT:
        raise ValueError(f"selection reads the {SELECTION_SPLIT!r} split only, not {split!r}: "
                         "a choice made on the test split makes its test numbers optimistic")
    if not scores:
        raise ValueError("nothing to select from")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    val = {}
    for option, per in scores.items():
        v = per.get(split)
        if v is None or not math.isfinite(float(v)):
            raise ValueError(f"option {option!r} has no finite {split!r} score: {dict(per)}")
        val[option] = float(v)
    order = list(prefer) if prefer is not None else list(scores)
    order += [o for o in scores if o not in order]
    best = max(val.values())
    tied = [o for o in order if o in val and val[o] >= best - tolerance - 1e-12]
    chosen = tied[0]
    others = [v for o, v in val.items() if o != chosen]
    return {"chosen": chosen, "split": split, "tolerance": tolerance, "best_val": best,
            "tied": tied, "margin": (val[chosen] - max(others)) if others else None,
            "scores": {o: dict(per) for o, per in scores.items()}}
