"""Triton kernels, one module per op, and the rules for where they can run.

Triton kernels run on CUDA devices, or on the CPU when the process was started with
TRITON_INTERPRET=1 (the interpreter, which the CPU test suite uses). ``triton.jit`` decides
between the two when a kernel module is imported, so the choice is fixed per process.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton  # noqa: F401
    from triton.runtime.jit import JITFunction
except ImportError:  # e.g. macOS: the Triton paths are simply unavailable
    triton = None
    JITFunction = None


def available() -> bool:
    """True when triton imports."""
    return triton is not None


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` was built by the interpreter (TRITON_INTERPRET=1 at import)."""
    return JITFunction is not None and not isinstance(kernel, JITFunction)


def can_run(kernel, device: torch.device) -> bool:
    """True when ``kernel`` can launch on tensors of ``device``."""
    if triton is None:
        return False
    if is_interpreted(kernel):
        return device.type == "cpu"
    return device.type == "cuda"


def launchable(kernel):
    """``wrap_triton(kernel)`` so torch.compile traces the launch; interpreted kernels launch as they are."""
    if is_interpreted(kernel):
        return kernel
    return torch.library.wrap_triton(kernel)


@dataclass
class Launch:
    """One kernel launch, planned: kept apart from running it so tools can compile it offline."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    meta: dict  # constexprs, num_warps, num_stages

    def run(self) -> None:
        launchable(self.kernel)[self.grid](*self.args, **self.meta)
