"""Fused operations, each a registered torch op with autograd and a fake kernel.

Each public function checks its arguments, then dispatches to the compiled or Triton kernel
for the tensors' device, falling back to a PyTorch composite where none is available.
"""
from .conv3x3 import conv3x3_relu
from .crop_concat import crop_concat
from .weighted_cross_entropy import weighted_softmax_cross_entropy

__all__ = ["conv3x3_relu", "crop_concat", "weighted_softmax_cross_entropy"]
