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
