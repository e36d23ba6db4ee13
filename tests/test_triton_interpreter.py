"""tests/triton_interpreter.py's speed patches: kernels still compute the same, and the language is restored."""
import os

import pytest
import torch

import triton_interpreter

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="only the interpreter is patched")

triton = pytest.importorskip("triton")
tl = triton.language


@triton.jit
def _scaled(x, factor):
    return x * factor


@triton.jit
def _helpers_kernel(x_ptr, out_ptr, n, factor, BLOCK: tl.constexpr):
    """out = x * factor, in blocks counted by tl.cdiv (a helper that sees triton.language.core, not tl)."""
    for block in range(0, tl.cdiv(n, BLOCK)):
        offs = block * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, _scaled(tl.load(x_ptr + offs, mask=offs < n), factor), mask=offs < n)


def test_helpers_compute_the_same_launch_after_launch_and_the_language_is_restored():
    from triton.runtime import interpreter

    assert getattr(interpreter._patch_lang, "once_per_launch", False)   # installed by conftest
    assert triton_interpreter.patch_language_once_per_launch()            # and installed once
    assert not hasattr(interpreter._patch_lang.__wrapped__, "once_per_launch")
    for n, factor in ((37, 3), (5, -2), (64, 7)):
        x = torch.arange(n, dtype=torch.int32)
        out = torch.zeros(n, dtype=torch.int32)
        _helpers_kernel[(1,)](x, out, n, factor, BLOCK=16)
        assert torch.equal(out, x * factor)
    # outside a launch the language is triton's own again: its builtins are not the interpreter's
    assert tl.core.is_builtin(tl.arange) and tl.core.is_builtin(tl.load)


def test_overflow_checks_are_off_only_where_they_would_be_dropped():
    """The interpreter's device_assert does nothing without debug; with debug the checks would count."""
    from triton.runtime import interpreter

    options = interpreter.interpreter_builder.options
    assert not options.debug and not options.sanitize_overflow
    x = torch.full((16,), 2 ** 30, dtype=torch.int32)
    out = torch.zeros(16, dtype=torch.int32)
    _helpers_kernel[(1,)](x, out, 16, 4, BLOCK=16)          # wraps as int32 does on a GPU (no check compiled)
    assert torch.equal(out, x * 4)
