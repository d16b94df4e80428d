"""Trainers for seed 000 (OmniBind): stage 0 (LiT teacher space), stage I (CAD), stage II (AF).

Each trainer takes cached tensors (trunk features, embeddings) and modules, trains in place and
runs single-process or under ``torchrun`` (DDP). :mod:`.common` holds the loop (deterministic
per-step randomness, exact resume, TensorBoard, tqdm), :mod:`.checkpoint` the checkpoint format
and :mod:`.distributed` the process-group helpers.
"""
from .af import AFConfig, FusionData, fused_accuracy, train_fusion
from .cad import ABLATION_VARIANTS, CADConfig, StudentData, train_cad
from .checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from .common import ConfigBase, LoopConfig, LoopResult, OptimConfig, TrainLoop
from .distributed import DistInfo, init_distributed, single_process
from .stage0 import Stage0Config, train_stage0

__all__ = [
    "ABLATION_VARIANTS", "AFConfig", "CADConfig", "Checkpoint", "ConfigBase", "DistInfo",
    "FusionData", "LoopConfig", "LoopResult", "OptimConfig", "Stage0Config", "StudentData",
    "TrainLoop", "fused_accuracy", "init_distributed", "latest_checkpoint", "load_checkpoint",
    "save_checkpoint", "single_process", "train_cad", "train_fusion", "train_stage0",
]
