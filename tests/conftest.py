"""Without a CUDA device, run Triton kernels in Triton's interpreter (on CPU tensors).

triton.jit picks interpreter or compiler when a kernel is defined, i.e. when unet_fast is
imported, so the choice is made here, before any test module imports the package. On a GPU
machine nothing changes: the same tests then launch the compiled kernels on CUDA tensors.
An explicit TRITON_INTERPRET in the environment always wins.
"""
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def _interpreter_bf16_as_on_gpu() -> None:
    """Make the interpreter's bf16 arithmetic what a GPU computes, so bf16 kernels can be tested on the CPU.

    Triton's interpreter (3.9 at least) keeps bf16 as raw uint16 bits: its tl.dot multiplies those
    bits as integers, and its fp32 -> bf16 cast truncates where the GPU rounds to nearest even.
    Here bf16 dot operands are widened to fp32 first (exact products, fp32 accumulation, as on
    tensor cores) and the cast rounds to nearest even. Tests only: compiled kernels are unaffected.
    """
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or not all(hasattr(builder, name) for name in ("create_dot", "cast_impl")):
        return
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


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_bf16_as_on_gpu()
import triton_interpreter_fix  # noqa: E402,F401  (Triton 3.5/3.6 interpreter under numpy >= 2.4)
