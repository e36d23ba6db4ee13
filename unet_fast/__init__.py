"""unet_fast: the U-Net of Ronneberger et al. (2015) with fused kernels on its hot paths."""
from ._info import info
from .losses import WeightedSoftmaxCrossEntropy
from .model import UNet

__version__ = "0.1.0"
__all__ = ["UNet", "WeightedSoftmaxCrossEntropy", "info", "__version__"]
