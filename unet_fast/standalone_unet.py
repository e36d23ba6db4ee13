"""The U-Net in one file that imports nothing but torch: the architecture shipped in exported models.

A bioimage.io package names its architecture as a source file and a class; the tools that run it
(bioimageio.core, deepImageJ, ilastik) import that file on its own, without unet_fast installed. So
this file must stand alone: it builds the same modules under the same names as
``unet_fast.architecture.UNetArchitecture`` (the parameter tree of ``unet_fast.UNet`` and
``unet_fast.reference.UNet``: state_dicts move between them unchanged; the tests check that the
outputs agree), and it is written so that ``torch.jit.script`` and ``torch.onnx.export`` accept it
with the image size left free. Its one input check is the size: an illegal one (a 2x2 max-pool of an
odd size) would otherwise run, flooring the pool and cropping half a pixel off centre, and give a
plausible but wrong result.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, padding: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=padding)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, padding: int):
        super().__init__()
        self.upconv = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv1 = nn.Conv2d(2 * out_channels, out_channels, 3, padding=padding)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upconv(x)
        height, width = x.shape[-2], x.shape[-1]
        top = (skip.shape[-2] - height) // 2     # copy and crop: the centre of the skip connection
        left = (skip.shape[-1] - width) // 2
        x = torch.cat([skip[:, :, top:top + height, left:left + width], x], dim=1)
        return F.relu(self.conv2(F.relu(self.conv1(x))))


def _size_passes(n: int, depth: int, loss: int) -> bool:
    """Whether n pixels pass the network (``unet_fast.geometry.trace_sizes``): loss = pixels two 3x3 convs remove."""
    skips = []
    for _ in range(depth - 1):
        n -= loss
        if n < 1 or n % 2:
            return False
        skips.append(n)
        n //= 2
    n -= loss
    if n < 1:
        return False
    for skip in reversed(skips):
        n = 2 * n - loss
        if n < 1 or n > skip:
            return False
    return True


def smallest_input(depth: int, padding: str) -> int:
    """The smallest legal input size (``unet_fast.geometry.min_input_size``); the legal ones are
    ``smallest_input + 2 ** (depth - 1) * k``, k >= 0."""
    loss = 4 if padding == "valid" else 0
    for bottleneck in range(1, loss + 2):
        n = bottleneck + loss
        for _ in range(depth - 1):
            n = 2 * n + loss
        if _size_passes(n, depth, loss):
            return n
    raise AssertionError("unreachable")


class UNet(nn.Module):
    """Ronneberger et al. (2015); padding "valid" (the paper's: output smaller than input) or "same".

    Input (N, in_channels, H, W) of a legal size, ``min_size + size_step * k`` (see unet_fast.geometry;
    others raise a ValueError); output the logits, (N, num_classes, H', W').
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 5,
                 base_channels: int = 64, padding: str = "valid"):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        conv_padding = 1 if padding == "same" else 0
        self.depth = depth
        self.min_size = smallest_input(depth, padding)
        self.size_step = 2 ** (depth - 1)
        widths = [base_channels * 2 ** level for level in range(depth)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.encoder.append(DoubleConv(channels, width, conv_padding))
            channels = width
        self.decoder = nn.ModuleList(
            UpBlock(widths[level + 1], widths[level], conv_padding) for level in reversed(range(depth - 1)))
        self.head = nn.Conv2d(base_channels, num_classes, 1)

    def check_size(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError("input must have 4 dimensions (N, C, H, W), got {}".format(x.dim()))
        for axis in range(2, 4):
            n = x.shape[axis]
            if n < self.min_size or (n - self.min_size) % self.size_step != 0:
                below = self.min_size + (n - self.min_size) // self.size_step * self.size_step
                above = below + self.size_step if n > self.min_size else self.min_size
                raise ValueError("input {} is {} pixels, not a legal size for this U-Net: the legal sizes are {} + {} k "
                                 "(nearest: {}); crop or mirror-pad the image to one".format(
                                     ["height", "width"][axis - 2], n, self.min_size, self.size_step,
                                     "{} or {}".format(below, above) if n > self.min_size else str(above)))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x)
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth - 1:
                skips.append(x)
                x = self.pool(x)
        for block in self.decoder:
            x = block(x, skips.pop())
        return self.head(x)
