"""The U-Net's architecture without a forward pass: its configuration, its parameter tree and their
initialisation, and the check of its inputs.

``unet_fast.UNet`` and the oracle ``unet_fast.reference.UNet`` both build on ``UNetArchitecture``,
so their state_dicts are one format by construction (weights move between them unchanged);
each writes its own forward pass. The tree: ``encoder[level].conv1/conv2`` (3x3), ``dropout``,
``decoder[i].upconv`` (2x2, stride 2) and ``.conv1/conv2`` (3x3; ``decoder[0]`` is the deepest
level), ``head`` (1x1).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import geometry


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class UNetArchitecture(nn.Module):
    """A U-Net's layers and configuration; ``depth`` counts resolution levels (the paper's: 5).

    ``padding="valid"`` is the paper's network (output smaller than input, see ``output_size``);
    ``padding="same"`` is the common padded variant (output = input).
    Weights: Gaussian with std sqrt(2 / N), N = the number of inputs of one neuron (k * k * C_in for
    a convolution; C_in for the stride-2 up-convolution, whose output pixels each see a single input
    pixel); biases zero.
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

        def conv3x3(c_in, c_out):
            return nn.Conv2d(c_in, c_out, 3, padding=conv_padding)

        widths = [base_channels * 2 ** level for level in range(depth)]
        self.encoder = nn.ModuleList()
        for c_in, width in zip([in_channels] + widths, widths):
            self.encoder.append(nn.ModuleDict(dict(conv1=conv3x3(c_in, width), conv2=conv3x3(width, width))))
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.ModuleList(
            nn.ModuleDict(dict(upconv=nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2),
                               conv1=conv3x3(2 * widths[level], widths[level]),
                               conv2=conv3x3(widths[level], widths[level])))
            for level in reversed(range(depth - 1)))
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
        """Raise an error saying what is wrong with x and how to fix it."""
        check_input(x, self.in_channels, self.depth, self.padding)


def check_input(x, in_channels: int, depth: int, padding: str) -> None:
    """The input check of every U-Net in this package: a float (N, C, H, W) tensor of legal sizes."""
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
