"""Triton kernels, one module per op, and the rules for where they can run.

Triton kernels run on CUDA devices, or on the CPU when the process was started with
TRITON_INTERPRET=1 (the interpreter, which the CPU test suite uses). ``triton.jit`` decides
between the two when a kernel is defined, i.e. when these modules are imported, so the choice
is fixed per process. The kernel modules import nothing from the op modules (ops/*.py).
"""
from __future__ import annotations

import contextlib
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


def can_run(device: torch.device) -> bool:
    """True when the kernels can launch on tensors of ``device`` in this process."""
    return triton is not None and device.type == ("cpu" if INTERPRETED else "cuda")


def on_device(device: torch.device):
    """``device`` as the current CUDA device for a with-block (a no-op off CUDA): Triton launches, CUDA events and
    graph captures use the current device and its stream, not the tensors' (cuda:1 while the current is 0)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@dataclass
class Launch:
    """One kernel launch, planned: kept apart from running it so tools can compile it offline."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    meta: dict  # constexprs, num_warps, num_stages
    then: "Launch | None" = None  # a second launch that completes this one's work (a split-K sum)

    def run(self):
        """Launch (and ``then``); returns what Triton returns for this kernel (the compiled kernel, with its
        register and spill counts)."""
        with on_device(self.args[0].device):  # every plan's first argument is a tensor of the launch
            compiled = self.kernel[self.grid](*self.args, **self.meta)
        if self.then is not None:
            self.then.run()
        return compiled
