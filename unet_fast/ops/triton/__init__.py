"""Triton kernels, one module per op, and the rules for where they can run.

Triton kernels run on CUDA devices, or on the CPU when the process was started with
TRITON_INTERPRET=1 (the interpreter, which the CPU test suite uses). ``triton.jit`` decides
between the two when a kernel is defined, i.e. when these modules are imported, so the choice
is fixed per process. The kernel modules import nothing from the op modules (ops/*.py).

Triton itself (half a second) and the kernel modules are imported when a kernel is first wanted
(``Kernels``), not with unet_fast: most processes on a CPU never launch one, and every command line
start paid for it. What is decided at import, from the installation and the environment, is only
whether Triton is there (``available``) and whether it will interpret (``INTERPRETED``); the first
kernel checks that Triton decided the same.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from dataclasses import dataclass

import torch

_INSTALLED = importlib.util.find_spec("triton") is not None


def interpret_requested() -> bool:
    """Whether TRITON_INTERPRET asks Triton to interpret, read as Triton reads it (the first kernel checks)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes", "y")


# Decided once: a call per op would break torch.compile (Dynamo folds this constant).
INTERPRETED = _INSTALLED and interpret_requested()
_DECIDED = INTERPRETED  # what the first kernel checks against (tools may patch INTERPRETED to plan for a GPU)
_checked = False


def available() -> bool:
    """True when triton is installed (it is imported when a kernel is first wanted)."""
    return _INSTALLED


def can_run(device: torch.device) -> bool:
    """True when the kernels can launch on tensors of ``device`` in this process."""
    return _INSTALLED and device.type == ("cpu" if INTERPRETED else "cuda")


def triton_or_none():
    """The triton module, or None where it is not installed or does not import: the kernel modules then
    define no kernels (they import without it, for their plans and tables)."""
    try:
        import triton
    except ImportError:
        return None
    return triton


def import_triton():
    """The triton module (installed: see ``available``); a RuntimeError naming the fix where it does not import."""
    try:
        import triton
    except ImportError as error:
        raise RuntimeError(f"triton is installed but does not import ({error}): reinstall it (pip install "
                           f"triton) or uninstall it, and unet_fast runs without Triton kernels") from error
    return triton


def _check_triton() -> None:
    """Import triton and check it interprets exactly when INTERPRETED says: a clear error where it does not
    import, or where TRITON_INTERPRET changed after unet_fast was imported (kernels would then be sent where
    they cannot run)."""
    global _checked
    if _checked:
        return
    triton = import_triton()
    from triton.runtime.jit import JITFunction

    @triton.jit
    def _probe():
        """Defined like every kernel here, so it says what triton.jit chose for them."""

    interpreted = not isinstance(_probe, JITFunction)
    if interpreted != _DECIDED:
        raise RuntimeError(
            f"Triton {'interprets' if interpreted else 'compiles'} its kernels (TRITON_INTERPRET="
            f"{os.environ.get('TRITON_INTERPRET', '')!r}), but unet_fast was imported when it would "
            f"{'interpret' if _DECIDED else 'compile'} them: set TRITON_INTERPRET before importing unet_fast")
    _checked = True


class Kernels:
    """Kernel module ops/triton/<name>.py, imported (with triton) on the first attribute read."""

    def __init__(self, name: str):
        self._name, self._module = name, None

    def __getattr__(self, attribute: str):
        if self._module is None:
            _check_triton()
            self._module = importlib.import_module(f"{__name__}.{self._name}")
        return getattr(self._module, attribute)


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
