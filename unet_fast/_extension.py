"""Loads the compiled extension unet_fast._C once and remembers why it is missing, if it is."""
from __future__ import annotations

import importlib
import os

import torch

_C = None
load_error: str | None = None
if os.environ.get("UNET_FAST_DISABLE_EXTENSION") == "1":  # run the pure PyTorch paths, e.g. to compare
    load_error = "disabled by UNET_FAST_DISABLE_EXTENSION=1"
else:
    try:
        _C = importlib.import_module("unet_fast._C")
    except ImportError as error:  # not built, or built against another torch
        load_error = f"{type(error).__name__}: {error}"


def available() -> bool:
    """True when the compiled ops are registered with torch."""
    return _C is not None


def _registered_kernels() -> frozenset[tuple[str, str]]:
    if _C is None:
        return frozenset()
    found = set()
    for schema in torch._C._dispatch_get_all_op_names():
        if not schema.startswith("unet_fast::") or schema.endswith("_triton"):  # Python-registered
            continue
        for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            if torch._C._dispatch_has_kernel_for_dispatch_key(schema, key):
                found.add((schema.split("::", 1)[1], device_type))
    return frozenset(found)


# Read once at import, so the per-call check is a set lookup that torch.compile traces as a constant.
_KERNELS = _registered_kernels()


def has_kernel(op_name: str, device_type: str) -> bool:
    """True when the extension registered a kernel for ``unet_fast::op_name`` on this device type."""
    return (op_name, device_type) in _KERNELS


def kernels(device_type: str) -> list[str]:
    """The ops the extension registered a kernel for on this device type."""
    return sorted(op for op, device in _KERNELS if device == device_type)


def describe() -> str:
    """What the extension provides here, or why it is missing, in a few words."""
    if _C is None:
        return f"not loaded: {load_error}"
    return "kernels " + ", ".join(f"{op} ({device})" for op, device in sorted(_KERNELS))
