"""Where the Triton kernel tests run: CUDA when present, else the CPU under the interpreter."""
import os

import pytest
import torch

import triton_interpreter
from unet_fast.ops import triton as triton_kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

needs_triton = pytest.mark.skipif(
    not triton_kernels.can_run(DEVICE),
    reason=f"Triton kernels cannot run on {DEVICE} here (no CUDA and TRITON_INTERPRET is not 1)")


def exact_fp32():
    """Context in which fp32 convolutions (aten's and ours) avoid TF32, so results compare tightly."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)


needs_bf16_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1" and triton_interpreter.PROBLEM is not None,
    reason=f"bf16 kernels cannot be interpreted as a GPU runs them: {triton_interpreter.PROBLEM}")
