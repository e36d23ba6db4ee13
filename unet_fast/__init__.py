"""unet_fast: the U-Net of Ronneberger et al. (2015) with fused kernels on its hot paths."""
from ._info import info
from ._io_alias import io  # noqa: F401  (deprecated: unet_fast.io is now image_io, normalization and sinks)
from .normalization import Normalization
from .losses import WeightedSoftmaxCrossEntropy
from .model import UNet
from .model_file import load_model, save_model
from .synthetic import synthetic_nuclei
from .weights import separate_touching, unet_weight_map

__version__ = "0.1.0"
__all__ = ["UNet", "info", "__version__", "synthetic_nuclei", "separate_touching", "unet_weight_map",
           "Normalization", "save_model", "load_model", "WeightedSoftmaxCrossEntropy"]
