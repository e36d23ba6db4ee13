"""Skip markers for tests that need a package some machines lack.

zarr is a declared dependency, but the GPU machines run without it (benchmarks/README.md): there
unet_fast.image_io cannot open a TIFF lazily (it reads one through zarr), and the tests that do skip.
"""
import importlib.util

import pytest

needs_zarr = pytest.mark.skipif(importlib.util.find_spec("zarr") is None,
                                reason="zarr is not installed: unet_fast.image_io reads TIFF files lazily through it")
