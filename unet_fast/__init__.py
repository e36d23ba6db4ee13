"""unet_fast: the U-Net of Ronneberger et al. (2015) with fused kernels on its hot paths."""
import importlib

from ._info import info
from ._io_alias import io  # noqa: F401  (deprecated: unet_fast.io is now image_io, normalization and sinks)
from .normalization import Normalization
from .losses import WeightedSoftmaxCrossEntropy
from .model import UNet
from .model_file import load_model, save_model

__version__ = "0.1.0"
# Imported on first use (PEP 562): they need scipy, a third of a second that `import unet_fast` alone, a
# forward, exporting and segmenting (but for instances) never use.
_LAZY = {"synthetic_nuclei": "synthetic", "separate_touching": "weights", "unet_weight_map": "weights"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["UNet", "info", "__version__", "synthetic_nuclei", "separate_touching", "unet_weight_map",
           "Normalization", "save_model", "load_model", "WeightedSoftmaxCrossEntropy"]
