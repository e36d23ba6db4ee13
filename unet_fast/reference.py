"""The plain PyTorch U-Net of Ronneberger, Fischer and Brox (2015), and its loss.

This is the oracle: tests compare every fast path against it and benchmarks time it as
the baseline, so it is written to be read, not to be fast. Library code never imports it.

Contracting path: per level two 3x3 convolutions + ReLU, then a 2x2 max-pool (stride 2);
the widths double per level (64 ... 1024 for the paper's depth 5). Dropout acts at the end
of the contracting path (on the bottleneck's output). Expansive path: a 2x2 up-convolution
halving the channels, concatenation with the centre-cropped encoder features of the same
level ("copy and crop": cropped skip first, then the up-convolved features, as in the
original Caffe model), and two 3x3 convolutions + ReLU. A 1x1 convolution maps to classes.
The layers, their initialisation and the input check are ``unet_fast.architecture``'s, shared
with ``unet_fast.UNet``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .architecture import UNetArchitecture
from .geometry import center_crop
from .ops.weighted_cross_entropy import weighted_cross_entropy_reference as weighted_cross_entropy

__all__ = ["UNet", "center_crop", "weighted_cross_entropy"]


class UNet(UNetArchitecture):
    """U-Net; ``depth`` counts resolution levels (the paper's network has depth 5).

    ``padding="valid"`` is the paper's network (output smaller than input, see
    ``output_size``); ``padding="same"`` is the common padded variant (output = input).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for block in self.encoder[:-1]:
            skips.append(two_convolutions(block, x))
            x = F.max_pool2d(skips[-1], 2)
        x = self.dropout(two_convolutions(self.encoder[-1], x))
        for block, skip in zip(self.decoder, reversed(skips)):
            x = block.upconv(x)
            x = two_convolutions(block, torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))
        return self.head(x)


def two_convolutions(block, x: torch.Tensor) -> torch.Tensor:
    """A block's two 3x3 convolutions, each followed by ReLU."""
    return F.relu(block.conv2(F.relu(block.conv1(x))))
