"""FLOP counts derived from the network's shapes, for the TFLOP/s column of the reports.

torch's FlopCounterMode counts a forward pass of the reference network on meta tensors (no memory,
no arithmetic): every convolution's 2 x multiply-adds; ReLU, pooling and the crop are not counted
(they are about 0.1 % of it). Depth 5, base 64, a 572x572 tile: 300.9 GFLOP (ARCHITECTURE.md section 2).
"""
import torch
from torch.utils.flop_counter import FlopCounterMode

from unet_fast import reference


def forward_gflop(size: int, batch: int = 1, **config) -> float:
    """GFLOP of one forward pass of ``reference.UNet(**config)`` on ``batch`` tiles of ``size`` x ``size``."""
    with torch.device("meta"):
        net = reference.UNet(**config)
        x = torch.empty(batch, net.in_channels, size, size)
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops() / 1e9
