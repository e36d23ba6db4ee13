"""Fused operations, each a registered torch op with autograd and a fake kernel.

Each public function checks its arguments, then runs the op's implementation for the tensors'
device and dtype: a compiled (C++/CUDA) kernel, a Triton kernel, or a PyTorch composite, by the
one precedence of ``backend`` (ops/_library.py, which also holds every op's schema), or the one
named by their ``implementation`` argument; ``implementations`` lists what can run.
"""
from ._library import backend, implementations
from .conv3x3 import conv3x3_relu
from .crop_concat import crop_concat
from .frozen_weights import frozen_weights
from .weighted_cross_entropy import weighted_softmax_cross_entropy

OPS = ("crop_concat", "weighted_cross_entropy", "conv3x3_relu")  # the ops behind the functions, by schema name
__all__ = ["OPS", "backend", "implementations", "conv3x3_relu", "crop_concat", "frozen_weights",
           "weighted_softmax_cross_entropy"]
