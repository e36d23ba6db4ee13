"""Skip markers for tests that need a package some machines lack.

zarr is a declared dependency, but the GPU machines run without it (benchmarks/README.md): there
unet_fast.image_io opens no OME-Zarr image and reads TIFFs through a memory map or whole instead of
through zarr, and the tests that need zarr itself skip.
"""
import importlib.util

import pytest

needs_zarr = pytest.mark.skipif(importlib.util.find_spec("zarr") is None,
                                reason="zarr is not installed: unet_fast reads TIFF files lazily, and OME-Zarr, "
                                       "through it")
