"""tests/triton_interpreter.py's speed patches: kernels still compute the same, and the language is restored."""
import os

import numpy as np
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


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _max_and_first_index(a, i, b, j):
    """(the larger value, its index; the lower index on ties): a combine function of two values each side."""
    take_b = (b > a) | ((b == a) & (j < i))
    return tl.where(take_b, b, a), tl.where(take_b, j, i)


@triton.jit
def _reductions_kernel(x_ptr, rows_ptr, cols_ptr, all_ptr, kept_ptr, arg_ptr, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    x = tl.load(x_ptr + r[:, None] * C + c[None, :])
    tl.store(rows_ptr + c, tl.reduce(x, 0, _max_nan))
    tl.store(cols_ptr + r, tl.reduce(x, 1, _max_nan))
    tl.store(all_ptr, tl.reduce(x, None, _max_nan))
    tl.store(kept_ptr + r[:, None] + c[None, :] * 0, tl.reduce(x, 1, _max_nan, keep_dims=True) + x * 0)
    index = r[:, None] * C + c[None, :]
    value, where = tl.reduce((tl.where(x == x, x, -100.0), index), 1, _max_and_first_index)  # NaN as -100
    tl.store(arg_ptr + r, where)


@pytest.mark.parametrize("rows, cols", [(8, 4), (1, 16), (16, 1)])
def test_custom_reductions_give_a_gpus_answer(rows, cols):
    """Reductions with a kernel's own combine function (vectorised in the interpreter by conftest) give the
    max with NaNs propagated and the first index of the max, along either axis, the whole block or kept."""
    from triton.runtime import interpreter

    assert getattr(interpreter.ReduceOps.generic_reduce, "vectorised", False)   # installed by conftest
    generator = torch.Generator().manual_seed(rows * cols)
    x = torch.randint(-3, 4, (rows, cols), generator=generator).float()   # ties for the first index
    x[rows // 2, cols - 1] = float("nan")
    x[rows - 1, 0] = 7.0
    rows_out, cols_out = torch.empty(cols), torch.empty(rows)
    all_out, kept, arg = torch.empty(1), torch.empty(rows), torch.empty(rows, dtype=torch.int32)
    _reductions_kernel[(1,)](x, rows_out, cols_out, all_out, kept, arg, R=rows, C=cols)

    assert torch.allclose(rows_out, x.amax(0), equal_nan=True)   # amax propagates NaN, as PropagateNan.ALL
    assert torch.allclose(cols_out, x.amax(1), equal_nan=True)
    assert torch.isnan(all_out).all()
    assert torch.allclose(kept, x.amax(1), equal_nan=True)
    finite = torch.nan_to_num(x, nan=-100.0)
    expected = torch.tensor([int(torch.nonzero(row == row.max())[0]) + i * cols for i, row in enumerate(finite)])
    assert torch.equal(arg.long(), expected)


def test_numpy_dtypes_are_the_originals():
    """The memoised dtype lookup (installed by conftest) answers as the original, for scalars, blocks and
    pointers, call after call."""
    from triton.runtime import interpreter

    lookup = interpreter._get_np_dtype
    assert getattr(lookup, "memoised", False)
    original = lookup.__wrapped__
    for dtype in (tl.float32, tl.bfloat16, tl.float16, tl.int1, tl.int8, tl.uint32, tl.int64, tl.float8e4nv):
        pointer = tl.pointer_type(dtype)
        for tt in (dtype, tl.block_type(dtype, [4, 8]), pointer, tl.block_type(pointer, [2])):
            assert lookup(tt) == original(tt) and lookup(tt) == original(tt), tt
    assert lookup(tl.bfloat16) == np.uint16 and lookup(tl.block_type(tl.int1, [2])) == np.bool_
