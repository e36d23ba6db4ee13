"""Loss modules for training: the paper's weighted pixel-wise softmax cross-entropy, and the same plus a
soft Dice loss of the foreground (the default recipe's: the Dice term optimises the overlap the
segmentation is judged by; cross-entropy alone leaves foreground IoU about 0.7 points lower on real nuclei,
benchmarks/results/2026-11-26-recipe-experiments.md)."""
from __future__ import annotations

import math

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


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                   smooth: float = 1.0) -> torch.Tensor:
    """1 - the soft Dice coefficient of the foreground classes, averaged over them (classes 1..C-1; for
    two classes, of class 1 alone), each summed over the whole batch ("batch Dice", as nnU-Net): for class
    c, (2 sum p_c t_c + smooth) / (sum p_c + sum t_c + smooth), p_c its softmax probability and t_c
    whether the target is c. Pixels whose target is ``ignore_index`` count in no sum. Under torchrun each
    rank sums its own batch (nnU-Net gathers them across ranks; here the ranks are not synchronised).

    logits [N, C, h, w] (C >= 2), target [N, h, w] integers (no cropping here). Computed in float32 (or
    the logits' type if wider).
    A target value that is no class counts as no class's here; ``weighted_softmax_cross_entropy``
    is what reports it.
    """
    if logits.dim() != 4 or logits.shape[1] < 2:
        raise ValueError(f"soft_dice_loss: logits must be [N, C, h, w] with C >= 2, got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"soft_dice_loss: target must be [N, h, w] = {tuple(logits.shape[:1] + logits.shape[2:])}, "
                         f"got shape {tuple(target.shape)}")
    probabilities = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), 1)[:, 1:]
    classes = torch.arange(1, logits.shape[1], device=target.device).view(1, -1, 1, 1)
    target = target.long()  # a uint8 target compares with ignore_index wrapped mod 256 (-1 as 255, 256 as 0)
    valid = (target != ignore_index).unsqueeze(1)     # ignore_index may be a class: its pixels are no one's truth
    truth = ((target.unsqueeze(1) == classes) & valid).to(probabilities.dtype)
    probabilities = probabilities * valid
    dims = (0, 2, 3)
    overlap = (probabilities * truth).sum(dims)
    total = probabilities.sum(dims) + truth.sum(dims)
    return 1 - ((2 * overlap + smooth) / (total + smooth)).mean()


class WeightedCrossEntropyAndDice(nn.Module):
    """``WeightedSoftmaxCrossEntropy`` (mean reduction) + ``dice`` x ``soft_dice_loss``: the default
    recipe's training loss. The weight map weights the cross-entropy only. forward(logits, target, weight)
    as ``WeightedSoftmaxCrossEntropy``'s (with ``crop_to_logits``, the target is cropped for both terms)."""

    def __init__(self, dice: float = 1.0, ignore_index: int = -100, crop_to_logits: bool = False,
                 value_check: str = "auto"):
        super().__init__()
        if not (isinstance(dice, (int, float)) and not isinstance(dice, bool) and dice >= 0 and math.isfinite(dice)):
            raise ValueError(f"WeightedCrossEntropyAndDice: dice must be a number >= 0, got {dice!r}")
        self.dice = float(dice)
        self.cross_entropy = WeightedSoftmaxCrossEntropy("mean", ignore_index, crop_to_logits, value_check)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.cross_entropy(logits, target, weight)    # first: it checks the arguments and the targets
        if self.dice == 0:
            return loss
        if self.cross_entropy.crop_to_logits:
            target = _centre_crop(target, logits.shape[-2], logits.shape[-1], "target")
        return loss + self.dice * soft_dice_loss(logits, target, self.cross_entropy.ignore_index)

    def extra_repr(self) -> str:
        return f"dice={self.dice:g}"


def training_loss(dice: float = 0.0) -> nn.Module:
    """The loss ``fit`` trains with: the paper's weighted cross-entropy, plus ``dice`` x the soft Dice loss
    when ``dice`` > 0 (targets cropped to the logits, as a valid U-Net's output is smaller than its input)."""
    if dice == 0:
        return WeightedSoftmaxCrossEntropy(crop_to_logits=True)
    return WeightedCrossEntropyAndDice(dice, crop_to_logits=True)
