"""A workaround for Triton 3.5/3.6's interpreter under numpy >= 2.4, applied on import.

Written for triton 3.6.0 (the GPU machines' version; 3.5.1 has the same line, 3.7.0 and later
fixed it). Under TRITON_INTERPRET=1 a scalar tl.tensor used as an integer (``range(9 * k_blocks)``
in a kernel) goes through ``tensor.__index__``, which triton.runtime.interpreter._patch_lang_tensor
sets to ``int(self.handle.data)``; the data is a 1-element 1-D array, and numpy 2.4 removed int()
of arrays with ndim > 0: "TypeError: only 0-dimensional arrays can be converted to Python scalars".
Triton 3.7 reads ``int(self.handle.data.squeeze())``; this module makes 3.5/3.6 do the same.

Applied only when TRITON_INTERPRET=1 and the installed triton is one of KNOWN_VERSIONS; compiled
kernels never see it. Imported by tests/conftest.py (pytest runs) and by the benchmarks scripts that
run kernels in the interpreter under ``gpu.sh --dry-run`` (gpu_goals.py, gpu_sanitize.py, gpu_tma_check.py).
``APPLIED`` says whether it was applied, ``REASON`` why not.
"""
from __future__ import annotations

import os

KNOWN_VERSIONS = ("3.5.", "3.6.")  # major.minor prefixes whose interpreter has int(self.handle.data)

APPLIED = False
REASON = ""


def _index(self):
    return int(self.handle.data.squeeze())  # what triton >= 3.7 does


def apply() -> None:
    global APPLIED, REASON
    if APPLIED:
        return
    if os.environ.get("TRITON_INTERPRET") != "1":
        REASON = "TRITON_INTERPRET is not 1: compiled kernels need no fix"
        return
    try:
        import triton
        from triton.runtime import interpreter
    except ImportError as error:
        REASON = f"no triton ({error})"
        return
    if not triton.__version__.startswith(KNOWN_VERSIONS):
        REASON = f"triton {triton.__version__} is not one of {KNOWN_VERSIONS} (3.7+ has the fix)"
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        REASON = f"triton {triton.__version__}'s interpreter has no _patch_lang_tensor: not the code this fixes"
        return

    def patch_lang_tensor(tensor, *scope):
        original(tensor, *scope)
        if scope:  # 3.6: patched through a scope that restores it after the kernel call
            scope[0].set_attr(tensor, "__index__", _index)
        else:      # 3.5: set directly
            tensor.__index__ = _index

    interpreter._patch_lang_tensor = patch_lang_tensor  # _patch_lang looks it up in the module at each call
    APPLIED = True
    REASON = f"applied for triton {triton.__version__}"


apply()
