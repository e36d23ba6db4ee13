"""torch.compile(fullgraph=True) traces conv3x3_relu's forward and backward into Triton kernel calls.

Also the direct kernel and the pooled op (the fake path that opcheck checks on a GPU).

No GPU is needed to trace: AOTAutograd records the triton_op bodies as
triton_kernel_wrapper_functional nodes; only running the graph would need one. Run in a
subprocess with compiled (not interpreted) kernels, since this process may use the interpreter.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import sys
import torch
import unet_fast.ops.conv3x3

DYNAMIC = sys.argv[1] == 'dynamic'
POOL_DIRECT = sys.argv[2] == 'pool-direct'  # conv3x3_relu_pool, and conv3x3_relu through the direct kernel
from torch._dynamo.backends.common import aot_autograd

graphs = {}
def record(name):
    def compiler(gm, example_inputs):
        graphs[name] = gm.code
        return gm
    return compiler

torch._functorch.config.force_non_lazy_backward_lowering = True
backend = aot_autograd(fw_compiler=record("forward"), bw_compiler=record("backward"))
if POOL_DIRECT:  # UNet's first level with both switches on
    def fn(x, w1, b1, w2, b2):
        y, pooled = torch.ops.unet_fast.conv3x3_relu_pool(torch.ops.unet_fast.conv3x3_relu(x, w1, b1, None, 0, True),
                                                          w2, b2, None, 0, True)
        return y.sum() + pooled.sum()
    args = [torch.randn(2, 1, 11, 12), torch.randn(6, 1, 3, 3), torch.randn(6), torch.randn(7, 6, 3, 3), torch.randn(7)]
else:
    def fn(x, w, b, s):
        return torch.ops.unet_fast.conv3x3_relu(x, w, b, s, 0)
    args = [torch.randn(2, 5, 9, 10), torch.randn(6, 8, 3, 3), torch.randn(6), torch.randn(2, 3, 13, 12)]
f = torch.compile(fn, backend=backend, fullgraph=True, dynamic=DYNAMIC)
try:
    f(*[a.requires_grad_() for a in args])
except RuntimeError as error:  # running the traced kernels needs a GPU driver
    assert "driver" in str(error), error
fw, bw = graphs.get("forward", ""), graphs.get("backward", "")
if POOL_DIRECT:
    assert fw.count("triton_kernel_wrapper_functional(") == 2, fw
    assert "'CIN': 1" in fw and "'POOL': True" in fw, fw  # the direct kernel, then the pooled GEMM
    assert bw.count("triton_kernel_wrapper_functional(") == 4, bw  # dgrad, wgrad twice
    assert "max_pool2d_with_indices_backward" in bw, bw  # the pool's gradient is aten's
else:
    assert fw.count("triton_kernel_wrapper_functional(") == 1, fw
    assert bw.count("triton_kernel_wrapper_functional(") == 2, bw  # dgrad, wgrad
    assert "'HAS_OUT2': True" in bw  # grad_skip written by the dgrad epilogue
    assert DYNAMIC or "'C_SPLIT': 3" in bw  # symbolic with dynamic shapes
print("traced")
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, test_conv3x3.py compiles and runs it")
@pytest.mark.parametrize("op", ["conv3x3_relu", "pool-direct"])
@pytest.mark.parametrize("shapes", ["static", pytest.param("dynamic", marks=pytest.mark.slow)])
def test_compile_traces_forward_and_backward_kernels(shapes, op):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", SCRIPT, shapes, op], capture_output=True, text=True, env=env,
                          timeout=600)
    assert "traced" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
