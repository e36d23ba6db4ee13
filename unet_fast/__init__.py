"""unet_fast: the U-Net of Ronneberger et al. (2015) with fused kernels on its hot paths.

The names below are imported on first use (PEP 562), so that ``import unet_fast`` (and the
``unet-fast`` command's startup, which Ctrl-C must be able to interrupt cleanly) does not import torch.
"""
import importlib

from ._io_alias import io  # noqa: F401  (deprecated: unet_fast.io is now image_io, normalization and sinks)

__version__ = "0.1.0"
__all__ = ["UNet", "info", "__version__", "synthetic_nuclei", "separate_touching", "unet_weight_map",
           "Normalization", "save_model", "load_model", "WeightedSoftmaxCrossEntropy"]

_LAZY = {"info": "._info", "Normalization": ".normalization", "WeightedSoftmaxCrossEntropy": ".losses",
         "UNet": ".model", "load_model": ".model_file", "save_model": ".model_file",
         "synthetic_nuclei": ".synthetic", "separate_touching": ".weights", "unet_weight_map": ".weights"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
