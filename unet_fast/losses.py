"""Loss modules for training: the paper's weighted pixel-wise softmax cross-entropy."""
from __future__ import annotations

import torch
from torch import nn

from .geometry import center_crop
from .ops import weighted_softmax_cross_entropy


def _centre_crop(t: torch.Tensor, height: int, width: int, name: str) -> torch.Tensor:
    h, w = t.shape[-2:]
    if h < height or w < width:
        raise ValueError(f"WeightedSoftmaxCrossEntropy: {name} of size {(h, w)} is smaller than the logits' "
                         f"{(height, width)} and cannot be cropped to them")
    return center_crop(t, (height, width))


class WeightedSoftmaxCrossEntropy(nn.Module):
    """Pixel-wise softmax cross-entropy weighted by a per-pixel map (Ronneberger et al. 2015, eq. 1).

    forward(logits [N, C, h, w], target [N, H, W], weight [N, H, W] or None) calls
    ``unet_fast.ops.weighted_softmax_cross_entropy``; "mean" divides by the number of pixels
    whose target is not ``ignore_index``. With ``crop_to_logits=True`` the target and weight are
    centre-cropped to the logits' h, w first (a valid U-Net's output is smaller than its input,
    so labels made for the input tile are cropped as the network crops its features); the crop
    is a view, no copy.
    """

    def __init__(self, reduction: str = "mean", ignore_index: int = -100, crop_to_logits: bool = False,
                 value_check: str = "auto"):
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"WeightedSoftmaxCrossEntropy: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.crop_to_logits = crop_to_logits
        self.value_check = value_check  # when invalid targets/weights raise: see weighted_softmax_cross_entropy

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if self.crop_to_logits and isinstance(logits, torch.Tensor) and logits.dim() == 4:
            height, width = logits.shape[-2:]
            target = _centre_crop(target, height, width, "target")
            if weight is not None:
                weight = _centre_crop(weight, height, width, "weight")
        return weighted_softmax_cross_entropy(logits, target, weight, reduction=self.reduction,
                                              ignore_index=self.ignore_index, value_check=self.value_check)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, crop_to_logits={self.crop_to_logits}"
