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


#: Upper bounds on a U-Net's size, checked before anything is allocated (a model file is untrusted
#: input: its claims go through ``check_config`` first). The paper's network: depth 5, 1024 channels
#: at the bottom, 31 M parameters.
MAX_DEPTH = geometry.MAX_DEPTH
MAX_CHANNELS = 16384           # the widest layer (base_channels * 2 ** (depth - 1)), in_channels, num_classes
MAX_PARAMETERS = 2 ** 30       # 4 GiB of float32 weights


def _check_positive_int(name: str, value, smallest: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
        raise ValueError(f"{name} must be {'a positive integer' if smallest == 1 else f'an integer >= {smallest}'}, "
                         f"got {value!r}")


def check_config(in_channels=1, num_classes=2, depth=5, base_channels=64, padding="valid", dropout=0.0) -> None:
    """Raise ValueError naming the argument when these constructor arguments do not make a U-Net
    this package can build: types, ranges, and the size limits above (pure arithmetic, no tensors)."""
    _check_positive_int("in_channels", in_channels)
    if isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes == 1:
        raise ValueError("num_classes must be at least 2: the pixel-wise softmax over one class is constant "
                         "(a binary mask is num_classes=2, background and foreground), got 1")
    _check_positive_int("num_classes", num_classes, 2)
    _check_positive_int("depth", depth)
    _check_positive_int("base_channels", base_channels)
    if padding not in geometry.PADDINGS:
        raise ValueError(f"padding must be one of {geometry.PADDINGS}, got {padding!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be at most {MAX_DEPTH} (unet_fast.architecture.MAX_DEPTH), got {depth}")
    widest = base_channels * 2 ** (depth - 1)
    for name, value, what in (("base_channels", widest, f"the widest layer, base_channels * 2 ** (depth - 1) = "
                                                        f"{base_channels} * 2 ** {depth - 1} = {widest:,}"),
                              ("in_channels", in_channels, str(in_channels)),
                              ("num_classes", num_classes, str(num_classes))):
        if value > MAX_CHANNELS:
            raise ValueError(f"{name}: {what} channels is above the limit of {MAX_CHANNELS} "
                             f"(unet_fast.architecture.MAX_CHANNELS)")
    count = parameter_count(in_channels, num_classes, depth, base_channels)
    if count > MAX_PARAMETERS:
        raise ValueError(f"depth={depth}, base_channels={base_channels}: {count:,} parameters, above the limit of "
                         f"{MAX_PARAMETERS:,} (unet_fast.architecture.MAX_PARAMETERS); the paper's network has "
                         f"31 M (depth 5, base_channels 64)")


def parameter_shapes(in_channels: int, num_classes: int, depth: int, base_channels: int) -> dict[str, tuple]:
    """The state_dict's names and shapes, in its order, without building anything."""
    widths = [base_channels * 2 ** level for level in range(depth)]
    shapes: dict[str, tuple] = {}

    def conv(name, c_in, c_out, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

    for level, (c_in, width) in enumerate(zip([in_channels] + widths, widths)):
        conv(f"encoder.{level}.conv1", c_in, width, 3)
        conv(f"encoder.{level}.conv2", width, width, 3)
    for i, level in enumerate(reversed(range(depth - 1))):
        shapes[f"decoder.{i}.upconv.weight"] = (widths[level + 1], widths[level], 2, 2)   # transposed: (in, out)
        shapes[f"decoder.{i}.upconv.bias"] = (widths[level],)
        conv(f"decoder.{i}.conv1", 2 * widths[level], widths[level], 3)
        conv(f"decoder.{i}.conv2", widths[level], widths[level], 3)
    conv("head", base_channels, num_classes, 1)
    return shapes


def parameter_count(in_channels: int, num_classes: int, depth: int, base_channels: int) -> int:
    """Number of parameters, in closed form (a sum over levels; no tensors)."""
    return sum(math.prod(shape) for shape in parameter_shapes(in_channels, num_classes, depth, base_channels).values())


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
        check_config(in_channels, num_classes, depth, base_channels, padding, dropout)
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
        weights = self.head.weight.dtype
        if x.dtype != weights and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"input is {x.dtype} but the network's weights are {weights}; convert the input "
                            f"(x.to({weights})) or the network (model.to({x.dtype})), or run under torch.autocast")


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
