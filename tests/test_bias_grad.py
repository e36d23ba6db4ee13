"""The bias gradient op (ops/triton/bias_grad.py): the gradient's sum over batch and pixels, with or without
the ReLU mask applied in the same pass, against float64 aten; the op's registration (opcheck)."""
import pytest
import torch

import unet_fast.ops  # noqa: F401  (registers the ops)
from unet_fast.ops.triton import bias_grad as kernels
from tolerances import assert_close
from triton_device import DEVICE, needs_bf16_interpreter, needs_triton


def _tensor(shape, layout, dtype, seed):
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if layout == "sliced":  # a channel slice of a wider channels_last tensor: strided, as cuDNN's grad_cat[:, cs:]
        wide = torch.randn((shape[0], shape[1] + 3, *shape[2:]), generator=torch.Generator().manual_seed(seed))
        t = wide.contiguous(memory_format=torch.channels_last)[:, 3:]
    elif layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(DEVICE, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16_interpreter)])
@pytest.mark.parametrize("layout", ["channels_last", "nchw", "sliced"])
@pytest.mark.parametrize("shape", [(2, 70, 9, 11), (1, 3, 1, 1), (3, 5, 7, 2)], ids=["bands", "one-pixel", "odd"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "relu-mask"])
def test_matches_float64_aten(shape, layout, dtype, masked):
    grad = _tensor(shape, layout, dtype, 0)
    y = torch.relu(_tensor(shape, "channels_last", dtype, 1)) if masked else None
    if masked:
        y[0, 0, 0, 0] = float("nan")  # a NaN output passes its gradient, as torch.where(y <= 0, 0, grad)
        y[0, -1, -1, -1] = 0
    got = torch.ops.unet_fast.bias_grad_triton(grad, y)
    want = grad.double() if y is None else torch.where(y <= 0, 0, grad).double()
    if masked:
        assert got[0].is_contiguous(memory_format=torch.channels_last) and got[0].dtype == dtype
        assert torch.equal(got[0], want.to(dtype))
    assert got[-1].dtype == torch.float32 and got[-1].shape == (shape[1],)
    assert_close(got[-1], want.sum((0, 2, 3)), dtype=torch.float32)


@needs_triton
def test_every_band_counts_once():
    """Rows that split unevenly over the bands (the interpreter's three: 128, 70 and none): each row once."""
    grad = torch.ones((2, 65, 9, 11), device=DEVICE)  # 198 rows, 2 channel blocks
    assert kernels.bands(198, 2, grad.device) == 3 or DEVICE != "cpu"
    (bias,) = torch.ops.unet_fast.bias_grad_triton(grad, None)
    assert torch.equal(bias, torch.full((65,), 198.0, device=DEVICE))


@needs_triton
@pytest.mark.parametrize("masked", [False, True])
def test_opcheck(masked):
    grad = torch.randn(2, 5, 4, 3, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = torch.relu(torch.randn(2, 5, 4, 3, device=DEVICE)).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.unet_fast.bias_grad_triton.default, (grad, y if masked else None))
