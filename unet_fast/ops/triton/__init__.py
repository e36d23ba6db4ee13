"""Triton kernels, one module per op, and the rules for where they can run.

Triton kernels run on CUDA devices, or on the CPU when the process was started with
TRITON_INTERPRET=1 (the interpreter, which the CPU test suite uses). ``triton.jit`` decides
between the two when a kernel module is imported, so the choice is fixed per process.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    from triton.runtime.jit import JITFunction
except ImportError:  # e.g. macOS: the Triton paths are simply unavailable
    triton = None

if triton is not None:
    @triton.jit
    def _probe():
        """Defined like every kernel here, so it says what triton.jit chose for them."""

    # Decided once: an isinstance check per call breaks torch.compile (Dynamo cannot type a kernel).
    INTERPRETED = not isinstance(_probe, JITFunction)
else:
    INTERPRETED = False


def available() -> bool:
    """True when triton imports."""
    return triton is not None


def is_interpreted(kernel) -> bool:
    """True when the kernels of this process run in the interpreter (TRITON_INTERPRET=1 at import)."""
    return INTERPRETED


def can_run(kernel, device: torch.device) -> bool:
    """True when ``kernel`` can launch on tensors of ``device``."""
    return triton is not None and device.type == ("cpu" if INTERPRETED else "cuda")


def launchable(kernel):
    """``wrap_triton(kernel)`` so torch.compile traces the launch; interpreted kernels launch as they are."""
    if INTERPRETED:
        return kernel
    return torch.library.wrap_triton(kernel)


@dataclass
class Launch:
    """One kernel launch, planned: kept apart from running it so tools can compile it offline."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    meta: dict  # constexprs, num_warps, num_stages

    def run(self):
        """Launch; returns what Triton returns (the compiled kernel, with its register and spill counts)."""
        return launchable(self.kernel)[self.grid](*self.args, **self.meta)
