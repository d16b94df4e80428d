"""Sample descriptions for sample-level matching (seed 000, Sec. 3.4 and appendix A.2).

The paper: "we generate the descriptions for all the data samples via MLLM [73] and match the
data samples with the same semantics of the descriptions"; "we employ the LLaMA-Adapter to
generate descriptive texts for both the audio and point cloud data. We then establish
correspondence between the audio files and point clouds based on the semantic content of their
descriptions, calculating cosine similarity between the text embeddings of descriptions".

A describer turns samples into texts (:class:`SampleDescriber`). Two are provided:

* :class:`LabelTemplateDescriber` (the default; no model is available here): a sample is
  described by its own source label in a per-modality template ("a photo of a {}.", "the sound
  of a {}." ...). All samples of one source label then read alike, so sample-level matching
  reduces to a seeded, usage-balanced choice among the label's samples;
* :class:`CaptionDescriber`: wraps any :class:`Captioner` (an MLLM such as LLaMA-Adapter,
  BLIP, a CLAP/point captioner...) that maps one raw sample to a sentence; captions can be kept
  in a JSON-lines cache so a long captioning run is done once.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .sources import LabelledSource, readable_label

__all__ = ["DESCRIPTION_TEMPLATES", "CaptionDescriber", "Captioner", "LabelTemplateDescriber",
           "SampleDescriber"]

#: Default per-modality description templates (one ``{}`` for the readable label name; "a" /
#: "an" agree with the next word).
DESCRIPTION_TEMPLATES: dict[str, str] = {
    "image": "a photo of a {}.",
    "thermal": "a thermal image of a {}.",
    "event": "an event camera recording of a {}.",
    "tactile": "a tactile image of touching {}.",
    "audio": "the sound of a {}.",
    "point_cloud": "a point cloud of a {}.",
}


@runtime_checkable
class SampleDescriber(Protocol):
    """Describes samples of a source in words; ``identity`` is recorded in the index header."""

    identity: str

    def describe(self, key: str, source: LabelledSource, indices: Sequence[int]) -> list[str]:
        """One description per sample ``source[indices[i]]`` of the data set ``key``."""
        ...


@runtime_checkable
class Captioner(Protocol):
    """A model that captions one raw sample (what ``reader[i][0]`` returns) of a modality."""

    identity: str

    def caption(self, sample: Any, modality: str) -> str:
        """A one-sentence description of ``sample``."""
        ...


class LabelTemplateDescriber:
    """Describes a sample by its source label name in a per-modality template.

    Parameters
    ----------
    templates : ``{modality: template}`` overriding :data:`DESCRIPTION_TEMPLATES` entries.
    """

    def __init__(self, templates: Mapping[str, str] | None = None) -> None:
        self.templates = {**DESCRIPTION_TEMPLATES, **dict(templates or {})}
        for modality, t in self.templates.items():
            if t.count("{}") != 1:
                raise ValueError(f"description template for {modality} needs exactly one "
                                 f"'{{}}', got {t!r}")
        self.identity = "label_template:" + json.dumps(self.templates, sort_keys=True)

    def describe(self, key: str, source: LabelledSource, indices: Sequence[int]) -> list[str]:
        from omnibind_ros.sim.text import label_prompts

        template = self.templates.get(str(source.modality), "a {}.")
        names = [readable_label(n) for n in source.label_names]
        phrased = label_prompts(sorted(set(names)), [template])
        per_label = [phrased[n][0] for n in names]
        labels = np.asarray(source.labels)[np.asarray(indices, dtype=np.int64)]
        return [per_label[int(k)] for k in labels]


class CaptionDescriber:
    """Describes each sample with a :class:`Captioner` on its raw sample.

    Parameters
    ----------
    captioner : the captioning model.
    cache_path : JSON-lines cache of captions (``{"captioner", "dataset", "index", "path",
        "caption"}`` per line). Lines of another captioner, or whose sample file differs (when
        the reader has ``path(i)``), are ignored; new captions are appended.
    """

    def __init__(self, captioner: Captioner, *, cache_path: str | Path | None = None) -> None:
        self.captioner = captioner
        self.identity = f"caption:{getattr(captioner, 'identity', type(captioner).__name__)}"
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache: dict[tuple[str, int], tuple[str | None, str]] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                if rec.get("captioner") == self.identity:
                    self._cache[(rec["dataset"], int(rec["index"]))] = (rec.get("path"),
                                                                       rec["caption"])

    @staticmethod
    def _path(source: LabelledSource, i: int) -> str | None:
        getter = getattr(source, "path", None)
        return str(getter(i)) if callable(getter) else None

    def describe(self, key: str, source: LabelledSource, indices: Sequence[int]) -> list[str]:
        out: list[str] = []
        new: list[dict[str, Any]] = []
        for i in (int(k) for k in indices):
            path = self._path(source, i)
            hit = self._cache.get((key, i))
            if hit is not None and hit[0] == path:
                out.append(hit[1])
                continue
            sample, _ = source[i]
            caption = str(self.captioner.caption(sample, str(source.modality)))
            if not caption.strip():
                raise ValueError(f"captioner {self.identity} returned an empty caption for "
                                 f"{key}[{i}]")
            self._cache[(key, i)] = (path, caption)
            new.append({"captioner": self.identity, "dataset": key, "index": i, "path": path,
                        "caption": caption})
            out.append(caption)
        if new and self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
        return out
