"""UniAlign (seed 002): one frozen ViT with a modality-aware mixture of LoRA experts.

So far: :mod:`.moe_lora` (Eq. 3-9) and :mod:`.losses` (Eq. 10-16). Not yet here: the frozen
backbone and its CLIP-style pre-training, the modality tokenizers, the trainer, the
evaluation and the bundle export.
"""
