"""What this installation can run, and why not where it cannot."""
from __future__ import annotations

import platform

import torch

from . import _extension, ops


def _triton_status() -> tuple[bool, str]:
    from .ops import triton as kernels

    if not kernels.available():
        return False, "triton is not installed"
    try:
        triton = kernels.import_triton()
    except RuntimeError as error:
        return False, str(error)
    return True, f"triton {triton.__version__}"


def _extension_status(device_type: str) -> tuple[bool, str]:
    kernels = _extension.kernels(device_type)
    if kernels:
        return True, f"compiled {device_type.upper()} kernels: {', '.join(kernels)}"
    if not _extension.available():
        return False, f"unet_fast._C not loaded: {_extension.load_error}"
    if device_type == "cuda":
        return False, "unet_fast._C was built without CUDA (needs CUDA torch and nvcc, or FORCE_CUDA=1)"
    return False, "unet_fast._C registered no CPU kernel"


def info() -> dict:
    """Versions, devices, which backends are available (with the reason when one is not), and which
    implementation each op runs by default on each device."""
    from . import __version__
    from .model import auto_backend

    cuda = torch.cuda.is_available()
    triton_ok, triton_msg = _triton_status()
    devices = [torch.device("cpu")] + [torch.device("cuda", i)
                                       for i in range(torch.cuda.device_count() if cuda else 0)]
    auto = {str(device): auto_backend(device) for device in devices}
    triton_devices = [name for name, (backend, _) in auto.items() if backend == "triton"]
    backends = {
        "torch": (True, "always available (aten kernels)"),
        "extension-cpu": _extension_status("cpu"),
        "extension-cuda": _extension_status("cuda"),
        "triton": (bool(triton_devices), triton_msg + (f"; runs on {', '.join(triton_devices)}" if triton_devices
                                                    else "; no CUDA device it can run on, so Triton kernels run only "
                                                    "under TRITON_INTERPRET=1 (tests)")),
        "auto": (True, "; ".join(f"{name} -> {backend} ({why})" for name, (backend, why) in auto.items())),
    }
    return {
        "unet_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_msg if triton_ok else None,
        "extension": "loaded" if _extension.available() else f"missing ({_extension.load_error})",
        "devices": ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
        "backends": {name: {"available": ok, "why": why} for name, (ok, why) in backends.items()},
        "ops": {str(device): {op: ops.backend(op, device, torch.float32) for op in ops.OPS} for device in devices},
    }
