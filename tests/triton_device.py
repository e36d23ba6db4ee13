"""Where the Triton kernel tests run: CUDA when present, else the CPU under the interpreter."""
import pytest
import torch

from unet_fast.ops.conv3x3 import triton_usable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

needs_triton = pytest.mark.skipif(
    not triton_usable(DEVICE),
    reason=f"Triton kernels cannot run on {DEVICE} here (no CUDA and TRITON_INTERPRET is not 1)")


def exact_fp32():
    """Context in which fp32 convolutions (aten's and ours) avoid TF32, so results compare tightly."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
