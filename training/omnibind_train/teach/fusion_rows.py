"""Stage II training data with the new modality: the run's rows plus the bag's, matched by label.

The bag gives (camera frame, new-sensor sample) pairs only, so on its own it would teach the AF
head to fuse the new sensor with the camera and nothing else. Seed 000 builds its
"modality-free" data set (Sec. 3.4) by joining samples of different data sets that share a
label; the same label-level matching is applied here: each bag sample becomes
``matches_per_sample`` rows holding its own image and new-sensor embeddings plus the other
modalities (text, event, tactile, ...) of a run training sample of the same (pseudo-)label.
The run's own rows keep their modality-free records with the new modality absent (the data set
has no recording of the robot's new sensor). Without run data the bag rows hold image and the
new modality only.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..models.fusion import MODALITY_SLOTS
from ..trainers.af import FusionData
from ..trainers.common import generator

__all__ = ["fusion_rows", "label_matches"]


def label_matches(targets: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
                  ) -> torch.Tensor:
    """For each of ``targets`` ``[M]``, a random index into ``labels`` ``[N]`` with the same
    value, or -1 where no sample has it. Uniform among the candidates."""
    out = torch.full_like(targets, -1)
    for c in torch.unique(targets).tolist():
        rows = torch.nonzero(targets == c).flatten()
        pool = torch.nonzero(labels == c).flatten()
        if pool.numel():
            out[rows] = pool[torch.randint(pool.numel(), (rows.numel(),), generator=gen)]
    return out


def fusion_rows(modality: str, image: torch.Tensor, new: torch.Tensor, targets: torch.Tensor,
                run: FusionData | None, *, matches_per_sample: int = 1, seed: int = 0,
                slots: Sequence[str] = MODALITY_SLOTS) -> tuple[FusionData, dict[str, Any]]:
    """The stage II data set: run rows (new modality absent) + label-matched bag rows.

    Parameters
    ----------
    modality : the new modality.
    image, new : ``[M, D]`` the bag's teacher and (out-of-fold) student embeddings.
    targets : ``[M]`` the bag samples' label indices (given or pseudo).
    run : the run's training split (labels already in the bundle's label indices), or None.
    matches_per_sample : rows per bag sample.
    seed : seeds the matching.
    slots : slot order of the tokens.

    Returns
    -------
    (FusionData, stats): the rows, and how many came from where.
    """
    si, sn = list(slots).index("image"), list(slots).index(modality)
    m, d = image.shape
    k = int(matches_per_sample)
    idx = torch.arange(m).repeat_interleave(k)
    tokens = torch.zeros(m * k, len(slots), d)
    present = torch.zeros(m * k, len(slots), dtype=torch.bool)
    matched = 0
    if run is not None:
        run_tokens, run_present = run.tokens.clone(), run.present.clone()
        run_tokens[:, sn] = 0.0
        run_present[:, sn] = False
        partner = label_matches(targets[idx], run.labels, generator(seed, "teach-match"))
        has = partner >= 0
        matched = int(has.sum())
        tokens[has], present[has] = run_tokens[partner[has]], run_present[partner[has]]
    tokens[:, si], present[:, si] = image[idx].float(), True
    tokens[:, sn], present[:, sn] = new[idx].float(), True
    if run is None:
        data = FusionData(tokens, present, targets[idx].long(), torch.arange(m * k), present)
        n_run = 0
    else:
        masks = run.record_masks.clone()
        masks[:, sn] = False
        n_run = run.labels.numel()
        data = FusionData(torch.cat([run_tokens, tokens]), torch.cat([run_present, present]),
                          torch.cat([run.labels.long(), targets[idx].long()]),
                          torch.cat([run.records, n_run + torch.arange(m * k)]),
                          torch.cat([masks, present]))
    stats = {"run_samples": n_run, "run_records": 0 if run is None else int(run.records.numel()),
             "bag_rows": m * k, "bag_rows_label_matched": matched,
             "bag_rows_unmatched": (m * k - matched) if run is not None else m * k}
    return data, stats
