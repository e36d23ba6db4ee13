"""``unet_fast.io``, the old name of what is now ``image_io``, ``normalization`` and ``sinks`` (a module
named io shadowed the standard library's): importing from it still works, with a DeprecationWarning."""
import sys
import types
import warnings


class _DeprecatedIo(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(f"module 'unet_fast.io' has no attribute {name!r}")
        from . import image_io, normalization, sinks   # here: importing unet_fast must not import torch

        for module in (normalization, image_io, sinks):
            if hasattr(module, name) and not name.startswith("_"):
                warnings.warn(f"unet_fast.io is deprecated: use {module.__name__}.{name}", DeprecationWarning,
                              stacklevel=2)
                return getattr(module, name)
        raise AttributeError(f"module 'unet_fast.io' has no attribute {name!r}")


io = sys.modules.setdefault(f"{__package__}.io", _DeprecatedIo(f"{__package__}.io", __doc__))
