"""UniAlign (seed 002): one frozen ViT with a modality-aware mixture of LoRA experts.

Modules, in data-flow order: :mod:`.vocab` (each modality's labelled data set's vocabulary),
:mod:`.data` (inputs at the family's sizes, the per-modality data sets), :mod:`.pretrain` (the
analogue's small CLIP, then frozen), :mod:`.backbone` (the frozen ViT with MoE-LoRA FFNs; real
CLIP checkpoints), :mod:`.moe_lora` (Eq. 3-9), :mod:`.tokenizers`, :mod:`.model`,
:mod:`.losses` (Eq. 10-16), :mod:`.train` (mixed batches, modality-aware accumulation, DDP),
:mod:`.pipeline` and :mod:`.stages` (``omnibind-train`` with ``family: unialign``),
:mod:`.report`, :mod:`.params` (trainable-parameter accounting), :mod:`.export` (the bundle's
graphs) and :mod:`.paper` (paper scale under torchrun).
"""
