"""The plain PyTorch U-Net of Ronneberger, Fischer and Brox (2015).

This is the oracle: tests compare every fast path against it and benchmarks time it as
the baseline, so it is written to be read, not to be fast.

Contracting path: per level two 3x3 convolutions + ReLU, then a 2x2 max-pool (stride 2);
the widths double per level (64 ... 1024 for the paper's depth 5). Dropout acts at the end
of the contracting path (on the bottleneck's output). Expansive path: a 2x2 up-convolution
halving the channels, concatenation with the centre-cropped encoder features of the same
level ("copy and crop": cropped skip first, then the up-convolved features, as in the
original Caffe model), and two 3x3 convolutions + ReLU. A 1x1 convolution maps to classes.

Weights: Gaussian with std sqrt(2 / N), N = the number of inputs of one neuron
(k * k * C_in for a convolution; C_in for the stride-2 up-convolution, whose output pixels
each see a single input pixel); biases zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import geometry


class DoubleConv(nn.Module):
    """Two 3x3 convolutions, each followed by ReLU."""

    def __init__(self, in_channels: int, out_channels: int, padding: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=padding)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class UpBlock(nn.Module):
    """2x2 up-convolution, copy and crop, then two 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, padding: int):
        super().__init__()
        self.upconv = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv1 = nn.Conv2d(2 * out_channels, out_channels, 3, padding=padding)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upconv(x)
        x = torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1)
        return F.relu(self.conv2(F.relu(self.conv1(x))))


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """The centre (h, w) window of x's last two dimensions (a view, no copy)."""
    h, w = size
    top = geometry.crop_offset(x.shape[-2], h)
    left = geometry.crop_offset(x.shape[-1], w)
    return x[..., top:top + h, left:left + w]


class UNet(nn.Module):
    """U-Net; ``depth`` counts resolution levels (the paper's network has depth 5).

    ``padding="valid"`` is the paper's network (output smaller than input, see
    ``output_size``); ``padding="same"`` is the common padded variant (output = input).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 5,
                 base_channels: int = 64, padding: str = "valid", dropout: float = 0.0):
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("depth", depth)
        _check_positive_int("base_channels", base_channels)
        if padding not in geometry.PADDINGS:
            raise ValueError(f"padding must be one of {geometry.PADDINGS}, got {padding!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.depth = depth
        self.base_channels = base_channels
        self.padding = padding
        self.dropout_p = dropout
        conv_padding = 1 if padding == "same" else 0

        widths = [base_channels * 2 ** level for level in range(depth)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.encoder.append(DoubleConv(channels, width, conv_padding))
            channels = width
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level], conv_padding)
            for level in reversed(range(depth - 1))
        )
        self.head = nn.Conv2d(base_channels, num_classes, 1)
        self.reset_parameters()

    def config(self) -> dict:
        """Constructor arguments: enough to rebuild this architecture."""
        return dict(in_channels=self.in_channels, num_classes=self.num_classes, depth=self.depth,
                    base_channels=self.base_channels, padding=self.padding, dropout=self.dropout_p)

    def reset_parameters(self) -> None:
        """He initialisation as in the paper: std = sqrt(2 / inputs of one neuron)."""
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                kh, kw = module.kernel_size
                sh, sw = module.stride
                fan_in = module.in_channels * (kh // sh) * (kw // sw)
            elif isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                fan_in = module.in_channels * kh * kw
            else:
                continue
            nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
            nn.init.zeros_(module.bias)

    def output_size(self, n: int) -> int:
        """Output size along one axis for an input of n pixels."""
        return geometry.output_size(n, self.depth, self.padding)

    def input_size_for(self, output: int) -> int:
        """Smallest legal input size giving at least ``output`` pixels."""
        return geometry.input_size_for(output, self.depth, self.padding)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError saying what is wrong with x and how to fix it."""
        check_input(x, self.in_channels, self.depth, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth - 1:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        x = self.dropout(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            x = block(x, skip)
        return self.head(x)


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_input(x, in_channels: int, depth: int, padding: str) -> None:
    """Shared input validation of every U-Net in this package."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"input must have 4 dimensions (N, C, H, W), got shape {tuple(x.shape)}{hint}")
    if x.shape[1] != in_channels:
        raise ValueError(f"input has {x.shape[1]} channels but the network was built with "
                         f"in_channels={in_channels} (input shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got {x.dtype} (convert with x.float())")
    for axis, n in (("height", x.shape[2]), ("width", x.shape[3])):
        trace = geometry.trace_sizes(n, depth, padding)
        if trace.problem is not None:
            raise ValueError(f"input {axis}: " + geometry.size_error_message(n, depth, padding, trace.problem))


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                           reduction: str = "mean", ignore_index: int = -100) -> torch.Tensor:
    """The paper's loss as a composite: pixel-wise softmax cross-entropy times a weight map.

    "mean" divides the weighted sum by the number of pixels whose target is not ignore_index.
    """
    loss = F.cross_entropy(logits.float(), target.long(), reduction="none", ignore_index=ignore_index)
    if weight is not None:
        loss = loss * weight.float()
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (target != ignore_index).sum().clamp(min=1)
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
