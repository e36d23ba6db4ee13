"""The fused backward of relu + 2x2 max-pool (encoder levels with the pooled epilogue) against aten."""
import pytest
import torch
import torch.nn.functional as F

import unet_fast.ops  # noqa: F401  (registers the ops)
from unet_fast.ops.triton.relu_pool_backward import relu_pool_backward
from triton_device import DEVICE, needs_triton


def aten_reference(y, grad_y, grad_pooled):
    y = y.detach().requires_grad_()
    pooled = F.max_pool2d(y, 2)
    grad = torch.autograd.grad([y, pooled], [y], [grad_y, grad_pooled])[0]
    return grad.masked_fill(y <= 0, 0)


@needs_triton
@pytest.mark.parametrize("shape", [(2, 5, 8, 6), (1, 3, 7, 9), (2, 40, 5, 5)], ids=["even", "odd-hw", "c40"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_matches_aten_bit_for_bit_with_ties_and_nan(shape, layout):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(-2, 3, shape, generator=g).float()  # small integers: many ties inside windows
    y[0, 0, 1, 1] = float("nan")
    y[-1, -1, 0, 0] = y[-1, -1, 1, 0] = float("nan")  # two NaNs in one window: aten takes the last
    grad_y = torch.randn(shape, generator=g)
    grad_pooled = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=g)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y, grad_y, grad_pooled = (t.contiguous(memory_format=memory_format).to(DEVICE) for t in (y, grad_y, grad_pooled))
    got = relu_pool_backward(y, grad_y, grad_pooled)
    want = aten_reference(y, grad_y, grad_pooled)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)
    # with the bias gradient summed by the same pass (the op where cuDNN computes the weight gradient)
    masked, bias = torch.ops.unet_fast.relu_pool_backward_bias_triton(y, grad_y, grad_pooled)
    assert torch.equal(masked, want) and bias.dtype == torch.float32
    torch.testing.assert_close(bias, want.double().sum((0, 2, 3)).float(), rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.library.opcheck(torch.ops.unet_fast.relu_pool_backward_bias_triton.default, (y, grad_y, grad_pooled))
