"""crop_concat: every implementation against an index-loop oracle, opcheck of every registered op, bad input.

Implementations: the public function's default, the composite (crop_concat_reference), the Triton op
(torch.ops.unet_fast.crop_concat_triton: CUDA, or the CPU under the interpreter) and the CUDA C++ op
(torch.ops.unet_fast.crop_concat, on a GPU).
"""
import pytest
import torch

from unet_fast import ops
from unet_fast.ops import crop_concat
from unet_fast.ops.crop_concat import crop_concat_reference
from triton_device import DEVICE, needs_triton

SHAPES = [  # (skip shape, x shape): crop offsets 0 and > 0 (odd margins too), odd sizes and channel counts
    ((2, 3, 11, 13), (2, 5, 11, 13)),
    ((2, 3, 20, 21), (2, 5, 11, 12)),
    ((1, 16, 17, 18), (1, 16, 9, 10)),
    ((3, 1, 9, 7), (3, 2, 1, 1)),
]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def oracle(skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """cat([centre crop of skip, x], dim=1) element by element, the crop offset computed here."""
    n, cs, sh, sw = skip.shape
    cx, h, w = x.shape[1:]
    top, left = (sh - h) // 2, (sw - w) // 2
    out = torch.empty((n, cs + cx, h, w), dtype=x.dtype)
    for b in range(n):
        for c in range(cs + cx):
            for i in range(h):
                for j in range(w):
                    out[b, c, i, j] = skip[b, c, top + i, left + j] if c < cs else x[b, c - cs, i, j]
    return out


def gradient_oracle(skip_shape, x_channels: int, grad: torch.Tensor):
    """(d skip, d x) of sum(crop_concat(skip, x) * grad): grad's first channels in skip's window, zero around."""
    n, cs, sh, sw = skip_shape
    h, w = grad.shape[-2:]
    grad_skip = torch.zeros(skip_shape, dtype=grad.dtype)
    grad_skip[:, :, (sh - h) // 2:(sh - h) // 2 + h, (sw - w) // 2:(sw - w) // 2 + w] = grad[:, :cs]
    return grad_skip, grad[:, cs:cs + x_channels]


def make(skip_shape, x_shape, dtype, layout, device="cpu"):
    g = torch.Generator().manual_seed(0)
    skip = (torch.randn(skip_shape, generator=g) * 50).to(dtype).to(device)
    x = (torch.randn(x_shape, generator=g) * 50).to(dtype).to(device)
    if layout == "channels_last":
        skip, x = skip.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # views with gaps, as a decoder sees a skip from a larger buffer
        skip = torch.cat([skip, skip], dim=-1)[..., ::2]
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return skip, x


def check_output(out, skip, x, layout):
    expected = oracle(skip.cpu(), x.cpu())
    assert out.dtype == x.dtype and out.shape == expected.shape
    assert torch.equal(out.cpu(), expected), f"{layout} {tuple(skip.shape)} {tuple(x.shape)}"
    if layout == "channels_last" and x.shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


def triton_op(skip, x):
    return torch.ops.unet_fast.crop_concat_triton(skip, x)


def extension_op(skip, x):
    return torch.ops.unet_fast.crop_concat(skip, x)


IMPLEMENTATIONS = {
    "default": crop_concat,
    "composite": crop_concat_reference,
    "triton": triton_op,
    "extension": extension_op,
}
IMPLEMENTATION_PARAMS = ["default", "composite", "triton", pytest.param("extension", marks=pytest.mark.gpu)]  # CUDA only


def runnable(impl: str, device=DEVICE) -> bool:
    return impl in ("default", "composite") or impl in ops.implementations("crop_concat", torch.device(device),
                                                                           torch.float32)


def skip_unless_runnable(impl):
    if not runnable(impl):
        pytest.skip(f"no {impl} implementation of crop_concat on {DEVICE} here")


@pytest.mark.parametrize("skip_shape, x_shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.uint8])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", IMPLEMENTATION_PARAMS)
def test_matches_oracle(skip_shape, x_shape, dtype, layout, impl):
    skip_unless_runnable(impl)
    skip, x = make(skip_shape, x_shape, dtype, layout, DEVICE)
    check_output(IMPLEMENTATIONS[impl](skip, x), skip, x, layout)


@pytest.mark.parametrize("skip_shape, x_shape", SHAPES[:3])
@pytest.mark.parametrize("impl", IMPLEMENTATION_PARAMS)
def test_gradients_match_oracle(skip_shape, x_shape, impl):
    skip_unless_runnable(impl)
    skip, x = (t.requires_grad_() for t in make(skip_shape, x_shape, torch.float32, "contiguous", DEVICE))
    out = IMPLEMENTATIONS[impl](skip, x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got_skip, got_x = torch.autograd.grad(out, (skip, x), grad.to(DEVICE))
    want_skip, want_x = gradient_oracle(skip.shape, x.shape[1], grad)
    assert torch.equal(got_skip.cpu(), want_skip) and torch.equal(got_x.cpu(), want_x)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_the_composites_skip_gradient_keeps_the_skips_layout(layout):
    """Else a channels_last network adds a contiguous gradient to the pool's channels_last one, and the
    ReLU's backward then reads mixed layouts (a strided path, 10x slower on the CPU)."""
    skip, x = (t.requires_grad_() for t in make(SHAPES[1][0], SHAPES[1][1], torch.float32, layout, "cpu"))
    out = crop_concat(skip, x, implementation="composite")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    got_skip, got_x = torch.autograd.grad(out, (skip, x), grad)
    want_skip, want_x = gradient_oracle(skip.shape, x.shape[1], grad)
    assert torch.equal(got_skip, want_skip) and torch.equal(got_x, want_x)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert got_skip.is_contiguous(memory_format=memory_format)
    with torch.no_grad():        # inference: the plain composite, no autograd node
        assert crop_concat(skip, x, implementation="composite").grad_fn is None


def test_default_is_the_composite_on_the_cpu():
    """Aten's cat of the cropped view is the CPU implementation (no faster kernel exists there), and
    Triton's interpreter is never a default."""
    assert ops.backend("crop_concat", torch.device("cpu"), torch.float32) == "composite"


@needs_triton
@pytest.mark.parametrize("skip_shape, x_shape", SHAPES[1:3])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_triton(skip_shape, x_shape, layout):
    skip, x = (t.requires_grad_() for t in make(skip_shape, x_shape, torch.float32, layout, DEVICE))
    torch.library.opcheck(torch.ops.unet_fast.crop_concat_triton.default, (skip, x))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_cuda_kernel(dtype, layout):
    if "extension" not in ops.implementations("crop_concat", torch.device("cuda"), dtype):
        pytest.skip("unet_fast._C has no CUDA crop_concat kernel here")
    skip, x = (t.requires_grad_() for t in make((2, 3, 20, 21), (2, 5, 11, 12), dtype, layout, "cuda"))
    torch.library.opcheck(torch.ops.unet_fast.crop_concat.default, (skip, x))


@pytest.mark.parametrize("args, error, match", [
    ((torch.randn(3, 4, 4), torch.randn(1, 3, 4, 4)), ValueError, r"skip must be a 4-D tensor .* got \(3, 4, 4\)"),
    ((torch.randn(1, 3, 4, 4), [[1.0]]), ValueError, "x must be a 4-D tensor .* got list"),
    ((torch.randn(2, 1, 8, 8), torch.randn(1, 1, 4, 4)), ValueError, "batch sizes differ: skip has 2, x has 1"),
    ((torch.randn(1, 1, 4, 8), torch.randn(1, 1, 6, 6)), ValueError, r"skip \(4, 8\) is smaller than x \(6, 6\)"),
    ((torch.randn(1, 1, 8, 8), torch.randn(1, 1, 4, 4, dtype=torch.float64)), TypeError, "dtypes differ"),
    ((torch.randn(1, 1, 8, 8), torch.randn(1, 1, 4, 4, device="meta")), ValueError, "devices differ"),
])
def test_bad_inputs(args, error, match):
    with pytest.raises(error, match=match):
        crop_concat(*args)


def test_implementation_that_cannot_run_is_refused():
    with pytest.raises(ValueError, match="implementation must be None or one of .* got 'cuda'"):
        crop_concat(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 4, 4), implementation="cuda")
    if not runnable("extension", "cpu"):
        with pytest.raises(ValueError, match="implementation 'extension' cannot run on cpu"):
            crop_concat(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 4, 4), implementation="extension")


@needs_triton
@pytest.mark.parametrize("skip_shape, x_shape", SHAPES)
@pytest.mark.parametrize("skip_channels_last", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_backward_op_splits_the_gradient_in_one_pass(skip_shape, x_shape, skip_channels_last, x_grad):
    """unet_fast::crop_concat_backward_triton: skip's gradient in its full shape and layout (zero around the
    window), and x's as a channels_last tensor of its own, from a gradient of any layout (here strided)."""
    cs, cx = skip_shape[1], x_shape[1]
    wide = torch.randn((x_shape[0], cs + cx + 2, *x_shape[2:]), generator=torch.Generator().manual_seed(3))
    grad = wide.contiguous(memory_format=torch.channels_last)[:, 1:-1].to(DEVICE)  # a channel slice: strided
    want_skip, want_x = gradient_oracle(skip_shape, cx, grad.cpu())
    got = torch.ops.unet_fast.crop_concat_backward_triton(grad, list(skip_shape), skip_channels_last, x_grad)
    assert len(got) == (2 if x_grad else 1)
    layout = torch.channels_last if skip_channels_last else torch.contiguous_format
    assert got[0].is_contiguous(memory_format=layout) and torch.equal(got[0].cpu(), want_skip)
    if x_grad:
        assert got[1].is_contiguous(memory_format=torch.channels_last) and torch.equal(got[1].cpu(), want_x)
    torch.library.opcheck(torch.ops.unet_fast.crop_concat_backward_triton.default,
                          (grad, list(skip_shape), skip_channels_last, x_grad))


@needs_triton
@pytest.mark.parametrize("skip_size", [[3, 3, 20, 21], [2, 9, 20, 21], [2, 3, 10, 21], [2, 3, 20]])
def test_backward_op_refuses_a_skip_size_that_does_not_fit(skip_size):
    """The op is public: a batch, channel count or size that does not fit the gradient is refused, not read
    past (it returned uninitialised rows, or read channels beyond the gradient's)."""
    grad = torch.randn(2, 8, 11, 12, device=DEVICE)
    with pytest.raises(ValueError, match="skip_size .* does not fit"):
        torch.ops.unet_fast.crop_concat_backward_triton(grad, skip_size, True, True)


@needs_triton
def test_triton_op_addresses_an_image_of_more_than_2_31_elements():
    """One image of a large tile can hold more than 2^31 elements (a 6000 px tile's first level: 64 x 5996^2),
    so a row times the row stride passes int32: the forward kernel read row 2 here 2^31 elements before it
    (its backward and the conv kernels already addressed in 64 bits). The rows of this 3 x 1 skip lie 2^30
    elements apart, so row 2 is the one past int32; the storage is mostly never touched (uint8, 4 GiB)."""
    big = 2 ** 30
    try:
        storage = torch.empty(4 * big + 8, dtype=torch.uint8, device=DEVICE)
    except (RuntimeError, MemoryError) as error:  # no room for 4 GiB of address space here
        pytest.skip(f"cannot reserve 4 GiB: {error}")
    storage[:16] = 0  # where the wrapped address lands
    skip = storage.as_strided((1, 1, 3, 1), (3 * big, 1, big, 1), storage_offset=2 * big)
    skip[0, 0, :, 0] = torch.tensor([5, 6, 7], dtype=torch.uint8)
    x = torch.full((1, 1, 3, 1), 3, dtype=torch.uint8, device=DEVICE)
    out = torch.ops.unet_fast.crop_concat_triton(skip, x)
    assert out.flatten().tolist() == [5, 6, 7, 3, 3, 3]
