"""Make Triton's interpreter compute bf16 as a GPU does, so bf16 kernels can be tested on the CPU.

Triton's interpreter keeps bf16 as raw uint16 bits: its tl.dot multiplies those bits as integers, and
its fp32 -> bf16 cast truncates where the GPU rounds to nearest even. ``patch_bf16`` widens bf16 dot
operands to fp32 first (exact products, fp32 accumulation, as on tensor cores) and makes the cast round
to nearest even. Tests only: compiled kernels are unaffected.

Written for Triton 3.9 (the CPU test machines): it replaces two methods of the private
``triton.runtime.interpreter.InterpreterBuilder``. The GPU machines (Triton 3.6) compile bf16 kernels
rather than interpret them. Where those internals differ, the patch is not applied, a probe kernel
shows it, and ``patch_bf16`` returns the reason, with which the bf16 interpreter tests skip.
Import this module without unet_fast: it must not decide TRITON_INTERPRET for the process.

Four more patches only save time (``skip_overflow_checks``, ``patch_language_once_per_launch``,
``vectorise_custom_reductions``, ``memoise_numpy_dtypes``): together they more than halve the interpreter's
time in the kernel tests, the larger part of the suite's.
"""
from __future__ import annotations

WRITTEN_FOR = ("3.9",)
PROBLEM: str | None = None  # set by patch_bf16: why bf16 kernels cannot be interpreted as on a GPU


def patch_bf16() -> str | None:
    """Patch the interpreter and check that it now rounds and multiplies bf16 as a GPU does; the reason
    why not (also kept in ``PROBLEM``), or None when it does."""
    global PROBLEM
    PROBLEM = _patch()
    return PROBLEM


def _patch() -> str | None:
    try:
        import numpy as np
        import triton
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError as error:
        return f"triton's interpreter does not import: {error}"
    builder = getattr(interpreter, "InterpreterBuilder", None)
    missing = [name for name in ("create_dot", "cast_impl") if not hasattr(builder, name)]
    if builder is None or missing:
        return (f"triton {triton.__version__}'s interpreter lacks InterpreterBuilder.{', '.join(missing) or '*'}; "
                f"the bf16 patch was written for triton {', '.join(WRITTEN_FOR)}")
    create_dot, cast_impl = builder.create_dot, builder.cast_impl

    def scalar(handle):
        return getattr(handle.dtype, "scalar", handle.dtype)

    def widen(handle):
        if scalar(handle) != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def dot(self, a, b, d, *args, **kwargs):
        return create_dot(self, widen(a), widen(b), d, *args, **kwargs)

    def cast(self, src, dst_type):
        if scalar(src) != tl.float32 or dst_type.scalar != tl.bfloat16:
            return cast_impl(self, src, dst_type)
        bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # round to nearest even (finite values)
        return interpreter.TensorHandle(rounded.astype(np.uint16), tl.bfloat16)

    builder.create_dot, builder.cast_impl = dot, cast
    problem = _probe()
    if problem is not None:
        builder.create_dot, builder.cast_impl = create_dot, cast_impl
        return f"the bf16 patch (written for triton {', '.join(WRITTEN_FOR)}) has no effect on triton " \
               f"{triton.__version__}: {problem}"
    return None


def _probe() -> str | None:
    """Run a bf16 dot and an fp32 -> bf16 cast through the interpreter; what is wrong, or None."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def dot_and_round(a_ptr, b_ptr, out_ptr, value_ptr, rounded_ptr):
        offs = tl.arange(0, 16)
        a = tl.load(a_ptr + offs[:, None] * 16 + offs[None, :])
        b = tl.load(b_ptr + offs[:, None] * 16 + offs[None, :])
        tl.store(out_ptr + offs[:, None] * 16 + offs[None, :], tl.dot(a, b))
        tl.store(rounded_ptr + offs, tl.load(value_ptr + offs).to(tl.bfloat16))

    a = torch.full((16, 16), 1.5, dtype=torch.bfloat16)
    b = torch.eye(16, dtype=torch.bfloat16) * 2
    out = torch.empty(16, 16)
    value = torch.full((16,), 1 + 3 * 2.0 ** -9)  # between two bf16 values, nearer the upper one
    rounded = torch.empty(16, dtype=torch.bfloat16)
    try:
        dot_and_round[(1,)](a, b, out, value, rounded)
    except Exception as error:  # the interpreter itself failed: report it, as any other mismatch
        return f"{type(error).__name__}: {error}"
    if not torch.equal(out, torch.full((16, 16), 3.0)):
        return "tl.dot of bf16 operands is not their product"
    if not torch.equal(rounded, value.to(torch.bfloat16)):
        return "the fp32 -> bf16 cast does not round to nearest even"
    return None


def skip_overflow_checks() -> bool:
    """Stop the interpreter computing Triton's integer-overflow checks, which it then drops: whether it did.

    Each 32-bit integer +, - and * of a kernel is also done in int64 and compared with int32's range, for a
    ``device_assert`` that does nothing unless the options say debug, which the interpreter's never do
    (triton 3.9: ``semantic.device_assert``). That was a third of the interpreter's time. Were debug on,
    the checks would run and be kept, so they are left on then. Compiled kernels are unaffected."""
    import dataclasses

    try:
        from triton.runtime import interpreter
        options = interpreter.interpreter_builder.options
    except (ImportError, AttributeError):
        return False
    if getattr(options, "debug", True) or not getattr(options, "sanitize_overflow", False):
        return False
    interpreter.interpreter_builder.options = dataclasses.replace(options, sanitize_overflow=False)
    return True


def patch_language_once_per_launch() -> bool:
    """Make the interpreter patch each triton.language module once per kernel launch, not again at every
    call of a @triton.jit helper inside it: whether it did.

    A launch (``GridExecutor``) patches the builtins of the language modules its kernel sees for the
    interpreter, and restores them when it ends; each helper call inside it patches the modules the helper
    sees (triton 3.9: ``InterpretedFunction.__call__``), which for our helpers are the kernel's, patched
    already: listing their members to learn so was about a seventh of the interpreter's time in the network
    tests. A helper that sees another module (``tl.cdiv`` sees ``triton.language.core``) still patches it,
    once per launch. Compiled kernels are unaffected."""
    try:
        from triton.runtime import interpreter
        patch, scope_type, languages = interpreter._patch_lang, interpreter._LangPatchScope, (
            interpreter.tl, interpreter.tl.core)
    except (ImportError, AttributeError):
        return False
    if getattr(patch, "once_per_launch", False):
        return True
    patched: set[int] = set()    # the language modules patched in the launch in progress (launches do not nest)
    launching = []

    seen_by: dict = {}           # a function's language modules (a jit function's globals are its module's)

    def seen(fn) -> frozenset[int]:
        if fn not in seen_by:
            seen_by[fn] = frozenset(id(value) for value in fn.__globals__.values()
                                    if any(value is lang for lang in languages))
        return seen_by[fn]

    def patch_lang(fn):
        modules = seen(fn)
        if launching and modules <= patched:     # a helper's call inside a launch, its modules patched
            return scope_type()
        scope = patch(fn)
        patched.update(modules)
        if not launching:                        # a launch: forget the modules when it restores them
            restore = scope.restore

            def restore_and_end():
                launching.clear()
                patched.clear()
                restore()

            scope.restore = restore_and_end
            launching.append(True)
        return scope

    patch_lang.once_per_launch, patch_lang.__wrapped__ = True, patch
    interpreter._patch_lang = patch_lang
    return True


def vectorise_custom_reductions() -> bool:
    """Make the interpreter reduce with a kernel's own combine function (``tl.reduce(x, axis, fn)``) on whole
    arrays, halving the axis at each step, instead of calling it once per element: whether it did.

    Triton 3.9's interpreter runs sum, min, max and argmin/argmax in numpy but any other combine function
    element by element in Python (``ReduceOps.generic_reduce``): the pooled conv's NaN-propagating max took a
    quarter of the network tests' time. Triton asks a combine function to be associative and elementwise and
    fixes no order (a GPU reduces in a tree, as this does), so the result is one a GPU may give; for a max
    it is the same in any order. Compiled kernels are unaffected."""
    try:
        import numpy as np
        from triton.runtime import interpreter
        reduce_ops = interpreter.ReduceOps
        generic = reduce_ops.generic_reduce
    except (ImportError, AttributeError):
        return False
    if not all(hasattr(reduce_ops, name) for name in ("unravel", "to_tensor")):   # the helpers used below
        return False
    if getattr(generic, "vectorised", False):
        return True

    def tree_reduce(self, input):
        original_axis = self.axis
        input, axis = self.unravel(input, self.axis)
        dtypes = [arg.dtype for arg in input]
        data = [arg.handle.data for arg in input]
        while data[0].shape[axis] > 1:
            n = data[0].shape[axis]
            half = n // 2
            left = [self.to_tensor(np.take(d, range(half), axis=axis), t) for d, t in zip(data, dtypes)]
            right = [self.to_tensor(np.take(d, range(half, 2 * half), axis=axis), t) for d, t in zip(data, dtypes)]
            combined = self.combine_fn.fn(*left, *right)
            combined = combined if isinstance(combined, tuple) else (combined,)
            # a combine function may give back a Python scalar (a constant): as wide as the half it replaces
            merged = [np.broadcast_to(c.handle.data if hasattr(c, "handle") else np.asarray(c, d.dtype),
                                      left[0].handle.data.shape).astype(d.dtype) for c, d in zip(combined, data)]
            if n % 2:   # the odd element out joins the next round
                merged = [np.concatenate([m, np.take(d, [n - 1], axis=axis)], axis=axis) for m, d in zip(merged, data)]
            data = merged
        ret = []
        for d, t in zip(data, dtypes):
            if self.keep_dims:
                if original_axis is None:
                    d = d.reshape((1,) * len(input[0].handle.data.shape))
            else:
                d = np.squeeze(d, axis=axis)
                if original_axis is None:
                    d = d.item()
            ret.append(self.to_tensor(d, t))
        return ret

    tree_reduce.vectorised, tree_reduce.__wrapped__ = True, generic
    reduce_ops.generic_reduce = tree_reduce
    return True


def memoise_numpy_dtypes() -> bool:
    """Make the interpreter look up the numpy dtype of a Triton dtype in a table kept between calls: whether
    it did.

    Triton 3.9's ``interpreter._get_np_dtype`` builds its table of 18 dtypes, hashing each, at every call,
    and it is called for nearly every value a kernel makes: a tenth of the interpreter's time in the network
    tests. The answer depends on the scalar dtype alone, so it is computed once per dtype by the original.
    Compiled kernels are unaffected."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
        original = interpreter._get_np_dtype
    except (ImportError, AttributeError):
        return False
    if getattr(original, "memoised", False):
        return True
    known: dict = {}

    def get_np_dtype(tt_dtype):
        scalar = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        try:
            return known[scalar]
        except KeyError:
            known[scalar] = original(scalar)
            return known[scalar]
        except TypeError:   # not hashable: not a dtype the table knows; the original says so
            return original(tt_dtype)

    get_np_dtype.memoised, get_np_dtype.__wrapped__ = True, original
    interpreter._get_np_dtype = get_np_dtype
    return True
