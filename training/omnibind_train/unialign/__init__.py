"""UniAlign (seed 002): one frozen ViT with a modality-aware mixture of LoRA experts.

Started: :mod:`.moe_lora` (Eq. 3-9) and :mod:`.losses` (Eq. 10-16). The frozen backbone and
its CLIP-style pre-training, the modality tokenizers, training, evaluation and the bundle
export are issue 10's remaining work.
"""
