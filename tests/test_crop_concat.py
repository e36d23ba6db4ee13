import pytest
import torch

from unet_fast import _extension
from unet_fast.ops import crop_concat
from unet_fast.ops.crop_concat import crop_concat_reference
from triton_device import DEVICE, needs_triton

needs_extension = pytest.mark.skipif(not _extension.available(), reason="unet_fast._C not built")

SHAPES = [  # (skip shape, x shape): crop offsets 0 and > 0, odd sizes, odd channel counts
    ((2, 3, 11, 13), (2, 5, 11, 13)),
    ((2, 3, 20, 21), (2, 5, 11, 12)),
    ((1, 16, 64, 64), (1, 16, 56, 56)),
    ((3, 1, 9, 7), (3, 2, 1, 1)),
]


@pytest.mark.parametrize("skip_shape, x_shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.uint8])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("impl", ["public", "cpu_kernel"])
def test_matches_reference(skip_shape, x_shape, dtype, layout, impl):
    if impl == "cpu_kernel" and not _extension.has_kernel("crop_concat", "cpu"):
        pytest.skip("unet_fast._C not built")
    skip = (torch.randn(skip_shape) * 50).to(dtype)
    x = (torch.randn(x_shape) * 50).to(dtype)
    if layout == "channels_last":
        skip, x = skip.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # views with gaps, as a decoder sees a skip from a larger buffer
        skip = torch.cat([skip, skip], dim=-1)[..., ::2]
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    out = crop_concat(skip, x) if impl == "public" else torch.ops.unet_fast.crop_concat(skip, x)
    assert torch.equal(out, crop_concat_reference(skip, x))
    if layout == "channels_last" and x_shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("skip_shape, x_shape", SHAPES[:3])
@pytest.mark.parametrize("impl", ["public", "cpu_kernel"])
def test_gradients(skip_shape, x_shape, impl):
    if impl == "cpu_kernel" and not _extension.has_kernel("crop_concat", "cpu"):
        pytest.skip("unet_fast._C not built")
    op = crop_concat if impl == "public" else torch.ops.unet_fast.crop_concat
    skip = torch.randn(skip_shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
    if skip.numel() < 2000:  # gradcheck builds a dense Jacobian
        assert torch.autograd.gradcheck(op, (skip, x))
    out = op(skip, x)
    grad = torch.randn_like(out)
    g_skip, g_x = torch.autograd.grad(out, (skip, x), grad)
    r_skip, r_x = torch.autograd.grad(crop_concat_reference(skip, x), (skip, x), grad)
    assert g_skip.shape == skip.shape
    assert torch.equal(g_skip, r_skip) and torch.equal(g_x, r_x)


@needs_extension
@pytest.mark.parametrize("skip_shape, x_shape", SHAPES[:3])
def test_opcheck(skip_shape, x_shape):
    skip = torch.randn(skip_shape, requires_grad=True)
    x = torch.randn(x_shape, requires_grad=True)
    torch.library.opcheck(torch.ops.unet_fast.crop_concat.default, (skip, x))
    cl = (skip.detach().contiguous(memory_format=torch.channels_last).requires_grad_(),
          x.detach().contiguous(memory_format=torch.channels_last).requires_grad_())
    torch.library.opcheck(torch.ops.unet_fast.crop_concat.default, cl)


@needs_extension
def test_cpu_kernel_is_registered():
    assert _extension.has_kernel("crop_concat", "cpu")


def test_bad_inputs():
    with pytest.raises(ValueError, match="skip must be a 4-D tensor"):
        crop_concat(torch.randn(3, 4, 4), torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="batch sizes differ"):
        crop_concat(torch.randn(2, 1, 8, 8), torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="smaller than x"):
        crop_concat(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 6, 6))
    with pytest.raises(TypeError, match="dtypes differ"):
        crop_concat(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 4, 4, dtype=torch.float64))


# The Triton kernel (op unet_fast::crop_concat_triton): on CUDA, or on the CPU under the interpreter.


@needs_triton
@pytest.mark.parametrize("skip_shape, x_shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_triton_kernel_matches_reference(skip_shape, x_shape, dtype, layout):
    skip = (torch.randn(skip_shape) * 50).to(dtype).to(DEVICE)
    x = (torch.randn(x_shape) * 50).to(dtype).to(DEVICE)
    if layout == "channels_last":
        skip, x = skip.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        skip = torch.cat([skip, skip], dim=-1)[..., ::2]
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    out = torch.ops.unet_fast.crop_concat_triton(skip, x)
    assert torch.equal(out, crop_concat_reference(skip, x))
    if layout == "channels_last" and x_shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


@needs_triton
def test_triton_kernel_gradients():
    skip = torch.randn(2, 3, 20, 21, device=DEVICE, requires_grad=True)
    x = torch.randn(2, 5, 11, 12, device=DEVICE, requires_grad=True)
    out = torch.ops.unet_fast.crop_concat_triton(skip, x)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (skip, x), grad)
    want = torch.autograd.grad(crop_concat_reference(skip, x), (skip, x), grad)
    assert got[0].shape == skip.shape
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_kernel_opcheck_cuda(dtype):
    skip = torch.randn(2, 3, 20, 21, device="cuda", dtype=dtype, requires_grad=True)
    x = torch.randn(2, 5, 11, 12, device="cuda", dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.unet_fast.crop_concat_triton.default, (skip, x))
