"""Runtime tokenisation from the bundle's ``tokenizer.json``, with no torch or transformers.

The Hugging Face ``tokenizers`` library reads the same ``tokenizer.json`` that the training-side
fast tokenizer runs, so token ids are identical to training's (the exporter checks this).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omnibind_ros.core.backends.base import import_runtime
from omnibind_ros.core.bundle import TextSpec
from omnibind_ros.core.errors import InvalidDtypeError

__all__ = ["BundleTokenizer"]


class BundleTokenizer:
    """Callable: texts -> ``(input_ids, attention_mask)``, both int64 ``[K, L]``.

    Padding goes to the longest text of the call (right side, the bundle's pad token); texts
    longer than ``spec.max_length`` tokens are truncated.

    Parameters
    ----------
    spec : the bundle's text section.
    """

    def __init__(self, spec: TextSpec) -> None:
        tokenizers = import_runtime("tokenizers", backend="text",
                                    hint="pip install tokenizers")
        self.spec = spec
        self._tok = tokenizers.Tokenizer.from_file(str(spec.tokenizer_file))
        # tokenizer.json may carry its own padding/truncation settings; the bundle's win.
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=spec.max_length)
        self._tok.enable_padding(pad_id=spec.pad_id, pad_token=spec.pad_token)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenise K texts.

        Returns
        -------
        input_ids, attention_mask : int64 ``[K, L]``, L = longest tokenised text (<= max_length).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise InvalidDtypeError(f"texts must be str, got {sorted(set(bad))}")
        encodings = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask
