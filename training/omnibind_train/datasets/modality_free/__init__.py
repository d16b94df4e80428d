"""The modality-free data set builder of seed 000 (OmniBind, Sec. 3.4, Fig. 4, appendix A.2).

The paper: "We initially align the labels of multiple datasets, as enumerated in Tab. 1, powered
by LLM. Then we generate the descriptions for all the data samples via MLLM and match the data
samples with the same semantics of the descriptions. As depicted in Fig. 4, our dataset consists
of 50,080 samples of modality combinations, with the most prevalent combinations being two
modalities, accounting for 46%. The proportions for three-modal, four-modal, and five-modal
combinations are 15%, 16%, and 17%, respectively."

Here, from the readers of :mod:`omnibind_train.datasets` (or any object with ``modality``,
``label_names``, ``labels``):

1. **label level** (:mod:`.mapping`): label names aligned across data sets by their text
   similarity in the text teacher's space, written to a YAML label map that a person reviews and
   edits; the builder uses the file as edited and refuses a stale or malformed one;
2. **sample level** (:mod:`.describe`): samples described in words by a pluggable
   :class:`SampleDescriber` (default: label templates; :class:`CaptionDescriber` plugs in any
   :class:`Captioner`) and matched by the cosine of their description embeddings;
3. **the combination index** (:mod:`.builder`): which samples of which data sets form each
   multi-modal item, with the paper's size shares, seeded, written as JSON lines.

Typical use::

    from omnibind_train.datasets import open_dataset
    from omnibind_train.datasets.modality_free import build_modality_free_index

    sources = {"esc50": open_dataset("esc50", "/data/ESC-50", folds=[1, 2, 3, 4]),
               "shapenetpart": open_dataset("shapenetpart", "/data/shapenet", split="train"),
               ...}
    index = build_modality_free_index(sources, "labelmap.yaml", "train_index.jsonl")
    # first run: labelmap.yaml is proposed and written; review it (status, reviewed: true)
    # and build again -- the edited file is honoured from then on.
"""
from __future__ import annotations

from .builder import (
    DEFAULT_PROPORTIONS,
    PAPER_NUM_ITEMS,
    PAPER_STATED_PROPORTIONS,
    ModalityFreeBuildError,
    ModalityFreeIndex,
    StaleIndexError,
    build_modality_free_index,
    read_modality_free_index,
    size_quotas,
)
from .describe import (
    DESCRIPTION_TEMPLATES,
    CaptionDescriber,
    Captioner,
    LabelTemplateDescriber,
    SampleDescriber,
)
from .embedding import EncoderTextEmbedder, TextEmbedder
from .mapping import (
    DEFAULT_LABEL_TEMPLATE,
    DEFAULT_THRESHOLD,
    LabelMap,
    LabelMapError,
    SourceMatch,
    StaleLabelMapError,
    TargetLabel,
    load_or_create_label_map,
    propose_label_map,
)
from .sources import LabelledSource, readable_label

__all__ = ["DEFAULT_LABEL_TEMPLATE", "DEFAULT_PROPORTIONS", "DEFAULT_THRESHOLD",
           "DESCRIPTION_TEMPLATES", "PAPER_NUM_ITEMS", "PAPER_STATED_PROPORTIONS",
           "CaptionDescriber", "Captioner", "EncoderTextEmbedder", "LabelMap", "LabelMapError",
           "LabelTemplateDescriber", "LabelledSource", "ModalityFreeBuildError",
           "ModalityFreeIndex", "SampleDescriber", "SourceMatch", "StaleIndexError",
           "StaleLabelMapError", "TargetLabel", "TextEmbedder", "build_modality_free_index",
           "load_or_create_label_map", "propose_label_map", "read_modality_free_index",
           "readable_label", "size_quotas"]
