"""conv3x3_relu: the Triton kernels (interpreter on CPU, compiled on CUDA) against F.conv2d in float64.

Oracle: relu(conv2d(cat([window of skip, x]))) (and max_pool2d) computed by aten in float64 from the
same inputs, the window cut here. The kernels are reached through their ops
(torch.ops.unet_fast.conv3x3_*_triton) and the public function's ``implementation="triton"``.
"""
import pytest
import torch
import torch.nn.functional as F

import dataclasses

from unet_fast import geometry, ops
from unet_fast.ops import conv3x3_relu
from unet_fast.ops.conv3x3 import conv3x3_relu_reference
from unet_fast.ops.triton import conv3x3 as kernels
from unet_fast.ops.triton import conv3x3_configs as configs
from unet_fast.ops.triton.conv3x3_configs import Config
from tolerances import assert_close, assert_within_twice_plain_error
from triton_device import DEVICE, exact_fp32, needs_bf16_interpreter, needs_triton

# (batch, x channels, skip channels (0: no skip), x height, width, skip height, width, out channels, padding)
CASES = [
    pytest.param(2, 5, 0, 9, 11, 0, 0, 7, 0, id="odd-hw-odd-channels"),
    pytest.param(1, 3, 4, 8, 7, 8, 7, 6, 0, id="skip-offset-0"),
    pytest.param(2, 5, 3, 7, 9, 12, 14, 17, 0, id="skip-offset-gt0-cout-17"),
    pytest.param(2, 20, 0, 6, 5, 0, 0, 9, 1, id="pad1-cin-20"),
    pytest.param(1, 2, 18, 5, 6, 9, 9, 4, 1, id="pad1-skip-cs-18"),
    pytest.param(2, 1, 0, 18, 18, 0, 0, 8, 0, id="cin-1-wgrad-split"),
]


def make(batch, cx, cs, h, w, sh, sw, cout, layout, dtype=torch.float32, device=DEVICE):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cx, h, w, generator=g, dtype=dtype)
    skip = torch.randn(batch, cs, sh, sw, generator=g, dtype=dtype) if cs else None
    weight = torch.randn(cout, cs + cx, 3, 3, generator=g, dtype=dtype) / (3 * (cs + cx) ** 0.5)
    bias = torch.randn(cout, generator=g, dtype=dtype) * 0.1
    x, weight, bias = x.to(device), weight.to(device), bias.to(device)
    skip = skip.to(device) if skip is not None else None
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        skip = skip.contiguous(memory_format=torch.channels_last) if skip is not None else None
    elif layout == "strided":  # views with gaps, as a decoder sees a slice of a larger buffer
        x = torch.cat([x, x], dim=-1)[..., ::2]
        skip = skip.transpose(-1, -2).contiguous().transpose(-1, -2) if skip is not None else None
    return [t.requires_grad_() if t is not None else None for t in (x, weight, bias, skip)]


def oracle(x, weight, bias, skip, padding, pool=False, indices=None):
    """float64 (y,) or (y, pooled) of these inputs, differentiable with respect to them; with
    ``indices`` the pool takes y at those argmax positions."""
    x, weight, bias, skip = (t.double() if t is not None else None for t in (x, weight, bias, skip))
    if skip is not None:
        h, w = x.shape[-2:]
        top, left = (skip.shape[-2] - h) // 2, (skip.shape[-1] - w) // 2
        x = torch.cat([skip[..., top:top + h, left:left + w], x], dim=1)
    y = F.relu(F.conv2d(x, weight, bias, padding=padding))
    if not pool:
        return (y,)
    if indices is None:
        return y, F.max_pool2d(y, 2)
    return y, y.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)


def triton(x, weight, bias, skip, padding, pool=False, direct=False):
    with exact_fp32():  # on a GPU, our fp32 GEMMs would otherwise run in TF32
        return conv3x3_relu(x, weight, bias, skip=skip, padding=padding, pool=pool, direct=direct,
                            implementation="triton")


def present(*tensors):
    return [t for t in tensors if t is not None]


@needs_triton
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, cout, padding", CASES)
def test_forward_and_backward_match_oracle(batch, cx, cs, h, w, sh, sw, cout, padding, layout):
    x, weight, bias, skip = make(batch, cx, cs, h, w, sh, sw, cout, layout)
    out = triton(x, weight, bias, skip, padding)
    (expected,) = oracle(x, weight, bias, skip, padding)
    assert out.shape == expected.shape and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, expected, dtype=torch.float32)
    assert (expected == 0).any() and (expected > 0).any()  # the ReLU mask matters in backward
    inputs = present(x, weight, bias, skip)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with exact_fp32():
        got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, inputs, grad.double())
    for name, g, r in zip(("x", "weight", "bias", "skip"), got, want):
        assert g.shape == r.shape and g.dtype == torch.float32, name
        assert_close(g, r, dtype=torch.float32, msg=f"gradient of {name}")


# pool=True: (y, max_pool2d(y, 2)) from one kernel; direct=True: the FMA kernel where C_in <= 4 without skip.
# (batch, x channels, skip channels, x height, width, skip height, width, out channels, padding, pool, direct)
OPTION_CASES = [
    pytest.param(2, 5, 0, 10, 13, 0, 0, 7, 0, True, False, id="pool-odd-output-width"),
    pytest.param(2, 3, 0, 9, 12, 0, 0, 6, 0, True, False, id="pool-odd-output-height"),
    pytest.param(2, 5, 3, 8, 9, 12, 14, 17, 0, True, False, id="pool-skip-offset-gt0-cout-17"),
    pytest.param(1, 20, 0, 7, 6, 0, 0, 9, 1, True, False, id="pool-pad1-cin-20"),
    pytest.param(2, 1, 0, 11, 10, 0, 0, 8, 0, False, True, id="direct-cin-1"),
    pytest.param(2, 4, 0, 8, 9, 0, 0, 17, 1, False, True, id="direct-cin-4-pad1-cout-17"),
    pytest.param(2, 3, 0, 9, 10, 0, 0, 6, 0, True, True, id="direct-cin-3-pooled-takes-gemm-odd"),
    # C_out 40: two column tiles (BLOCK_N 32 in the interpreter and the direct kernel), the second partial
    pytest.param(2, 6, 0, 9, 10, 0, 0, 40, 0, True, False, id="pool-cout-40-two-column-tiles"),
    pytest.param(2, 2, 0, 9, 11, 0, 0, 40, 1, False, True, id="direct-cin-2-cout-40-two-column-tiles"),
]
DTYPE_LAYOUTS = [(torch.float32, "contiguous"), (torch.float32, "channels_last"), (torch.float32, "strided"),
                 pytest.param(torch.bfloat16, "channels_last", marks=needs_bf16_interpreter),
                 pytest.param(torch.bfloat16, "strided", marks=needs_bf16_interpreter)]


@needs_triton
@pytest.mark.parametrize("dtype, layout", DTYPE_LAYOUTS,
                         ids=["float32-contiguous", "float32-channels_last", "float32-strided",
                              "bfloat16-channels_last", "bfloat16-strided"])
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, cout, padding, pool, direct", OPTION_CASES)
def test_pool_and_direct_match_oracle(batch, cx, cs, h, w, sh, sw, cout, padding, pool, direct, dtype, layout):
    """Forward and every gradient (both outputs' gradients flowing) against conv2d + relu + max_pool2d.

    fp32: within the tolerance table of the float64 oracle. bf16: outputs within the table; gradients
    by the low-precision rule (error against the oracle at most about twice aten's in bf16), with the
    pool taken at our y's argmax: a near-tie within one bf16 rounding may rightly pick another pixel.
    """
    x, weight, bias, skip = make(batch, cx, cs, h, w, sh, sw, cout, layout, dtype=dtype)
    inputs = present(x, weight, bias, skip)
    got = triton(x, weight, bias, skip, padding, pool, direct)
    got = got if pool else (got,)
    indices = F.max_pool2d(got[0].detach(), 2, return_indices=True)[1] if pool and dtype != torch.float32 else None
    expected = oracle(x, weight, bias, skip, padding, pool, indices)
    for o, e in zip(got, expected):
        assert o.shape == e.shape and o.dtype == dtype
        assert o.is_contiguous(memory_format=torch.channels_last)
        assert_close(o, e, dtype=dtype)
    if pool:  # the epilogue's pool is exactly max_pool2d of the y it wrote
        assert torch.equal(got[1], F.max_pool2d(got[0], 2))
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(e.shape, generator=g).to(DEVICE) for e in expected]
    with exact_fp32():
        got_grads = torch.autograd.grad(got, inputs, [t.to(dtype) for t in grads])
    want_grads = torch.autograd.grad(expected, inputs, [t.double() for t in grads])
    if dtype == torch.float32:
        for name, a, b in zip(("x", "weight", "bias", "skip"), got_grads, want_grads):
            assert a.shape == b.shape, name
            assert_close(a, b, msg=f"gradient of {name}")
        return
    plain = conv3x3_relu_reference(*inputs[:3], skip, padding)
    plain = (plain, plain.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)) if pool else (plain,)
    plain_grads = torch.autograd.grad(plain, inputs, [t.to(dtype) for t in grads])
    for name, a, b, c in zip(("x", "weight", "bias", "skip"), got_grads, plain_grads, want_grads):
        assert_within_twice_plain_error(a, b, c, msg=f"gradient of {name}")


@needs_triton
def test_pool_gradient_ties_break_like_max_pool2d():
    """A constant y (zero weight, positive bias): every window ties; the weight gradient shows which
    pixel of each window received the pool's gradient, and must match aten's choice."""
    x, weight, bias, _ = make(2, 3, 0, 9, 8, 0, 0, 5, "channels_last")
    with torch.no_grad():
        weight.zero_()
        bias.abs_().add_(0.5)
    _, pooled = triton(x, weight, bias, None, 0, pool=True)
    _, pooled_ref = oracle(x, weight, bias, None, 0, pool=True)
    assert torch.equal(pooled.double(), pooled_ref)
    grad = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    with exact_fp32():
        (got,) = torch.autograd.grad(pooled, [weight], grad)
    (want,) = torch.autograd.grad(pooled_ref, [weight], grad.double())
    assert_close(got, want, dtype=torch.float32)


@needs_triton
@pytest.mark.parametrize("cx, cs, direct, pool, kernel", [
    (1, 0, True, False, "conv3x3_direct_kernel"), (4, 0, True, False, "conv3x3_direct_kernel"),
    (5, 0, True, False, "conv3x3_kernel"), (1, 2, True, False, "conv3x3_kernel"),
    (1, 0, False, False, "conv3x3_kernel"), (1, 0, True, True, "conv3x3_kernel"),
    (8, 0, False, True, "conv3x3_kernel")])
def test_forward_dispatch(cx, cs, direct, pool, kernel):
    """direct=True takes the direct kernel only for x alone with at most 4 channels, unpooled."""
    x = torch.empty(1, cx, 6, 6, device="meta").contiguous(memory_format=torch.channels_last)
    skip = torch.empty(1, cs, 6, 6, device="meta") if cs else None
    out = torch.empty(1, 8, 4, 4, device="meta")
    pooled = torch.empty(1, 8, 2, 2, device="meta") if pool else None
    w_packed = torch.empty(9 * (cx + cs), 8, device="meta")
    launch = kernels.plan_forward(x, skip, w_packed, None, out, pooled, 0, direct, device_type="cpu")
    assert launch.kernel.__name__ == kernel
    assert launch.meta.get("POOL", False) is pool


@needs_triton
def test_only_requested_gradients():
    x, weight, bias, skip = make(1, 3, 2, 6, 6, 8, 8, 4, "channels_last")
    with exact_fp32():
        out = triton(x.detach(), weight, None, skip.detach(), 0)
        (grad_weight,) = torch.autograd.grad(out.sum(), [weight])
    (expected,) = oracle(x.detach(), weight, None, skip.detach(), 0)
    (want,) = torch.autograd.grad(expected.sum(), [weight])
    assert_close(grad_weight, want, dtype=torch.float32)


@needs_triton
def test_an_nchw_gradient_reaches_the_kernels_channels_last(monkeypatch):
    """A 1x1 head's or an up-convolution's backward hands the conv an NCHW gradient (on the CPU at least);
    ReLU's mask is applied into y's channels_last layout, so the kernels read it coalesced, and the
    gradients are the reference's (aten's threshold_backward: zero where y <= 0)."""
    from unet_fast.ops import conv3x3 as op_module
    seen = []
    real = op_module._masked_backward
    monkeypatch.setattr(op_module, "_masked_backward",
                        lambda ctx, grad, *rest: seen.append(grad.is_contiguous(memory_format=torch.channels_last))
                        or real(ctx, grad, *rest))
    x, weight, bias, skip = make(2, 3, 2, 7, 9, 11, 13, 4, "channels_last")
    grad = torch.randn(2, 4, 5, 7, device=DEVICE)  # NCHW
    with exact_fp32():
        out = conv3x3_relu(x, weight, bias, skip=skip, padding=0, implementation="triton")
        got = torch.autograd.grad(out, [x, weight, bias, skip], grad)
        expected = conv3x3_relu_reference(x, weight, bias, skip, padding=0)  # cuDNN's, without TF32 too
        want = torch.autograd.grad(expected, [x, weight, bias, skip], grad)
    assert seen == [True]
    for name, g, w in zip(("x", "weight", "bias", "skip"), got, want):
        assert_close(g, w, dtype=torch.float32, msg=name)


@needs_triton
@pytest.mark.parametrize("padding", [0, 1])
def test_backward_ops_directly(padding):
    """The backward ops without autograd: dgrad splits its output between grad_skip's window and grad_x."""
    x, weight, _, skip = (t.detach() for t in make(2, 3, 2, 7, 8, 11, 10, 5, "channels_last"))
    grad = torch.randn(2, 5, 5 + 2 * padding, 6 + 2 * padding, device=DEVICE)
    with exact_fp32():
        grad_x, grad_skip = torch.ops.unet_fast.conv3x3_input_grad_triton(grad, weight, x, skip, padding)
        grad_weight, grad_bias = torch.ops.unet_fast.conv3x3_weight_grad_triton(grad, x, skip, padding)
    cat = torch.cat([skip[:, :, 2:9, 1:9], x], dim=1).double().requires_grad_()
    weight64 = weight.double().requires_grad_()
    want_cat, want_weight = torch.autograd.grad(F.conv2d(cat, weight64, padding=padding), [cat, weight64],
                                                grad.double())
    assert_close(grad_x, want_cat[:, 2:], dtype=torch.float32, msg="x")
    assert_close(grad_skip[:, :, 2:9, 1:9], want_cat[:, :2], dtype=torch.float32, msg="skip's window")
    grad_skip[:, :, 2:9, 1:9] = 0
    assert not grad_skip.any()  # zero outside the window
    assert grad_weight.dtype == grad_bias.dtype == torch.float32
    assert_close(grad_bias, grad.double().sum((0, 2, 3)), dtype=torch.float32, msg="bias, summed by the wgrad kernel")
    assert_close(grad_weight, want_weight, dtype=torch.float32, msg="weight")
    assert torch.ops.unet_fast.conv3x3_input_grad_triton(grad, weight[:, 2:], x, None, padding)[0].shape == x.shape


# A double convolution with the first conv's ReLU mask moved into the second's dgrad (UNet's wiring):
# every implementation of either conv, the mix the measured table can give (one on Triton, one composite),
# and the measured backward sending both convs' dgrad and wgrad to aten ("aten-backward": the mask is then
# a masked_fill after aten's dgrad).
@needs_triton
@pytest.mark.parametrize("first, second", [("triton", "triton"), ("triton", "composite"), ("composite", "triton"),
                                           ("aten-backward", "aten-backward")])
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, mid, padding, layout", [
    pytest.param(2, 5, 0, 11, 9, 0, 0, 7, 0, "strided", id="odd-strided"),
    pytest.param(1, 3, 4, 9, 10, 13, 12, 17, 1, "channels_last", id="skip-pad1-mid-17"),
])
def test_relu_mask_moved_into_the_next_dgrad(first, second, batch, cx, cs, h, w, sh, sw, mid, padding, layout,
                                             monkeypatch):
    x, w1, b1, skip = make(batch, cx, cs, h, w, sh, sw, mid, layout)
    w2 = (torch.randn(6, mid, 3, 3, generator=torch.Generator().manual_seed(3)) / (3 * mid ** 0.5)).to(DEVICE)
    b2 = torch.full((6,), 0.05, device=DEVICE)
    w2.requires_grad_(), b2.requires_grad_()
    monkeypatch.setattr(kernels, "backward_prefers_aten", lambda *args: (True, True))

    def conv(implementation, *args, skip=None, **flags):
        if implementation != "aten-backward":
            return conv3x3_relu(*args, skip=skip, padding=padding, implementation=implementation, **flags)
        return torch.ops.unet_fast.conv3x3_relu_triton(*args, skip, padding, False, True,  # measured
                                                       flags.get("mask_input_grad", False),
                                                       flags.get("output_grad_masked", False))

    (o1,) = oracle(x, w1, b1, skip, padding)
    (o2,) = oracle(o1, w2, b2, None, padding)
    assert (o1 == 0).any() and (o1 > 0).any() and (o2 == 0).any()  # both masks matter
    inputs = present(x, w1, b1, skip, w2, b2)
    names = ("x", "w1", "b1", "skip", "w2", "b2") if skip is not None else ("x", "w1", "b1", "w2", "b2")
    grad = torch.randn(o2.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    want = torch.autograd.grad(o2, inputs, grad.double())
    with exact_fp32():
        y1 = conv(first, x, w1, b1, skip=skip, output_grad_masked=True)
        got = torch.autograd.grad(conv(second, y1, w2, b2, mask_input_grad=True), inputs, grad)
    for name, g, r in zip(names, got, want):
        assert_close(g, r, dtype=torch.float32, msg=f"gradient of {name}")
    if first != "composite":  # the flag is honoured: without the second's mask, the first's gradients are wrong
        with exact_fp32():
            y1 = conv(first, x, w1, b1, skip=skip, output_grad_masked=True)
            unmasked = torch.autograd.grad(conv(second, y1, w2, b2), [w1], grad)[0]
        assert not torch.allclose(unmasked, want[1], rtol=1e-3, atol=1e-4)


@needs_triton
def test_mask_of_an_autocast_input_is_taken_before_the_cast():
    """A positive ReLU output that the autocast cast rounds to 0 keeps its gradient (the mask is x's, as given)."""
    x = torch.full((1, 4, 6, 6), 1e-9, device=DEVICE, requires_grad=True)  # 0 in float16
    weight = torch.randn(3, 4, 3, 3, device=DEVICE)
    grads = []
    for flag in (False, True):
        with torch.autocast(DEVICE.type, dtype=torch.float16):
            y = conv3x3_relu(x, weight, torch.ones(3, device=DEVICE), mask_input_grad=flag, implementation="composite")
        grads.append(torch.autograd.grad(y.float().sum(), [x])[0])
    assert grads[0].abs().min() > 0
    torch.testing.assert_close(grads[1], grads[0])


def test_compile_fullgraph_without_grad_under_autocast():
    """The weight-cast cache is not traced: fullgraph compiles under no_grad and autocast (inference)."""
    x, weight, bias = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    compiled = torch.compile(lambda t: conv3x3_relu(t, weight, bias), fullgraph=True, backend="eager")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = compiled(x)
        want = conv3x3_relu_reference(x, weight, bias)
    torch.testing.assert_close(got, want)


@needs_triton
def test_dgrad_applies_the_relu_mask_of_x_and_not_of_skip():
    """conv3x3_input_grad(relu_mask_x=True): grad_x is 0 where x <= 0 (x's NaN passes, as masked_fill);
    skip's gradient is left unmasked (its ReLU also feeds the pool: relu_pool_backward masks the sum)."""
    x, weight, _, skip = (t.detach() for t in make(2, 3, 2, 7, 8, 11, 10, 5, "channels_last"))
    x = torch.relu(x).contiguous(memory_format=torch.channels_last)
    x[0, 1, 2, 3] = float("nan")
    skip = skip - 0.5  # negative values too: they must not mask skip's gradient
    grad = torch.randn(2, 5, 5, 6, device=DEVICE)
    with exact_fp32():
        plain = torch.ops.unet_fast.conv3x3_input_grad_triton(grad, weight, x, skip, 0)
        masked = torch.ops.unet_fast.conv3x3_input_grad_triton(grad, weight, x, skip, 0, True)
    assert (x == 0).any()
    torch.testing.assert_close(masked[0], plain[0].masked_fill(x <= 0, 0), rtol=0, atol=0)
    torch.testing.assert_close(masked[1], plain[1], rtol=0, atol=0)
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_input_grad_triton.default, (grad, weight, x, skip, 0, True))


@needs_triton
def test_frozen_weights_pack_once_and_only_while_frozen(monkeypatch):
    """Inside frozen_weights each weight is packed (and cast) once; an in-place change is seen; outside it,
    nothing is reused, so a change through .data (invisible to the version counter) is seen too."""
    from unet_fast.ops import conv3x3 as op_module
    from unet_fast.ops.frozen_weights import frozen_weights

    packs = []
    real = kernels.pack_forward_weight
    monkeypatch.setattr(kernels, "pack_forward_weight", lambda w: packs.append(1) or real(w))
    x, weight, bias = (t.detach() for t in make(1, 3, 0, 7, 6, 0, 0, 5, "channels_last")[:3])

    def run():
        with exact_fp32():
            return conv3x3_relu(x, weight, bias, implementation="triton")

    with torch.no_grad():
        with frozen_weights():
            first, again = run(), run()
            assert len(packs) == 1
            torch.testing.assert_close(again, first, rtol=0, atol=0)
            weight.mul_(-1)  # in place: a new version, packed anew
            assert len(packs) == 1 and not torch.equal(run(), first) and len(packs) == 2
            weight.mul_(-1)
        torch.testing.assert_close(run(), first, rtol=0, atol=0)
        weight.data.mul_(-1)  # not versioned: only safe because nothing is reused outside frozen_weights
        (want,) = oracle(x, weight, bias, None, 0)
        assert_close(run(), want, dtype=torch.float32)
    assert op_module._cast(weight, torch.float32) is weight


def test_frozen_weights_reuse_casts_without_grad_only():
    from unet_fast.ops.conv3x3 import _cast
    from unet_fast.ops.frozen_weights import frozen_weights

    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    with frozen_weights():
        with torch.no_grad():
            a, b = _cast(weight, torch.bfloat16), _cast(weight, torch.bfloat16)
            assert a is b and a.dtype == torch.bfloat16
            with torch.inference_mode():  # inference tensors have no version counter
                assert _cast(weight, torch.float16) is _cast(weight, torch.float16)
        c = _cast(weight, torch.bfloat16)  # recording gradients: a fresh cast, linked to weight
        assert c is not a and c.grad_fn is not None
    with torch.no_grad():
        assert _cast(weight, torch.bfloat16) is not _cast(weight, torch.bfloat16)


def check_masked_dgrad(x, weight, skip, padding, config):
    """conv3x3_input_grad with ``config`` and the ReLU mask of x (made a ReLU output here) against float64
    aten: grad_x masked, skip's window unmasked."""
    h, w = x.shape[-2:]
    cs = skip.shape[1] if skip is not None else 0
    grad = torch.randn(x.shape[0], weight.shape[0], h + 2 * padding - 2, w + 2 * padding - 2,
                       generator=torch.Generator().manual_seed(2)).to(DEVICE)
    grad = grad.contiguous(memory_format=torch.channels_last)
    relu_x = torch.relu(x).contiguous(memory_format=torch.channels_last)
    with exact_fp32():
        grad_x, grad_skip = kernels.conv3x3_input_grad(grad, weight, relu_x, skip, padding, config=config,
                                                       relu_mask_x=True)
    cat = relu_x if skip is None else torch.cat([geometry.center_crop(skip, (h, w)), relu_x], dim=1)
    cat = cat.double().requires_grad_()
    (want,) = torch.autograd.grad(F.conv2d(cat, weight.double(), padding=padding), [cat], grad.double())
    assert_close(grad_x, want[:, cs:].masked_fill(relu_x <= 0, 0), dtype=torch.float32, msg="x")
    if skip is not None:
        assert_close(geometry.center_crop(grad_skip, (h, w)), want[:, :cs], dtype=torch.float32, msg="skip")


# The TMA kernel (tensor descriptors; sm_90 through the tuner's table, the interpreter here) against the oracle:
# forward with and without skip, dgrad split between grad_skip's window and grad_x with the ReLU mask, odd
# output sizes (partial patches), channels that are no multiple of BLOCK_K, swapped operands.
TMA = Config(32, 16, 16, 4, 1, tma=True)  # 2 x 16 output pixels per program


@needs_triton
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, cout, padding, swap", [
    pytest.param(2, 8, 0, 9, 11, 0, 0, 20, 0, False, id="odd-cout-20"),
    pytest.param(2, 8, 4, 9, 21, 13, 25, 20, 0, False, id="skip-offset-two-patches-wide"),
    pytest.param(1, 12, 0, 7, 19, 0, 0, 8, 1, False, id="pad1-cin-12"),
    pytest.param(2, 8, 20, 7, 10, 7, 10, 12, 1, True, id="pad1-skip-same-size-swap"),
    pytest.param(1, 8, 8, 10, 10, 11, 11, 12, 1, False, id="pad1-skip-one-larger"),   # offset 0, frame on 2 sides
    pytest.param(2, 4, 8, 7, 9, 12, 14, 16, 1, False, id="pad1-skip-offset-gt0"),
])
def test_tma_kernel_matches_oracle(batch, cx, cs, h, w, sh, sw, cout, padding, swap):
    x, weight, bias, skip = (t.detach() if t is not None else None
                             for t in make(batch, cx, cs, h, w, sh, sw, cout, "channels_last"))
    config = dataclasses.replace(TMA, swap=swap)
    with exact_fp32():  # the plan too: with TF32 allowed, fp32 layers of 16+ channels round and take no TMA
        out, _ = kernels.conv3x3_forward(x, weight, bias, skip, padding, config=config)
        launch = kernels.plan_forward(x, skip, kernels.pack_forward_weight(weight), bias, out, None, padding, False,
                                      config=config)
    assert launch.kernel is kernels.conv3x3_tma_kernel
    (expected,) = oracle(x, weight, bias, skip, padding)
    assert_close(out, expected, dtype=torch.float32)
    check_masked_dgrad(x, weight, skip, padding, config)


# Split-K (the tuner's candidate for the small deep layers): the K steps of skip then x shared among programs,
# fp32 partials summed in order by a second kernel that runs the epilogue (bias, ReLU, the dgrad's split
# between grad_skip and grad_x, the ReLU mask); splits that do not divide the steps, more splits than steps.
@needs_triton
@pytest.mark.parametrize("split_k", [2, 3, 100])
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, cout, padding, swap", [
    pytest.param(2, 5, 3, 7, 9, 12, 14, 17, 0, False, id="skip-offset-cout-17"),
    pytest.param(1, 20, 0, 6, 5, 0, 0, 9, 1, True, id="pad1-swap"),
])
def test_split_k_matches_oracle(split_k, batch, cx, cs, h, w, sh, sw, cout, padding, swap):
    x, weight, bias, skip = (t.detach() if t is not None else None
                             for t in make(batch, cx, cs, h, w, sh, sw, cout, "channels_last"))
    config = Config(32, 16, 16, 4, 1, swap=swap, split_k=split_k)
    with exact_fp32():
        out, _ = kernels.conv3x3_forward(x, weight, bias, skip, padding, config=config)
    launch = kernels.plan_forward(x, skip, kernels.pack_forward_weight(weight), bias, out, None, padding, False,
                                  config=config)
    assert launch.meta["SPLIT_K"] > 1 and launch.then.kernel is kernels.conv3x3_split_sum_kernel
    (expected,) = oracle(x, weight, bias, skip, padding)
    assert_close(out, expected, dtype=torch.float32)
    check_masked_dgrad(x, weight, skip, padding, config)
    pooled = kernels.plan_forward(x, skip, kernels.pack_forward_weight(weight), bias, out, out[:, :, ::2, ::2],
                                  padding, False, config=config)
    assert pooled.meta["SPLIT_K"] == 1 and pooled.then is None  # the pooled epilogue: one program per tile


@needs_triton
@pytest.mark.parametrize("group_m, pool", [(2, False), (3, True), (8, False)])
def test_grouped_row_tiles_match_oracle(group_m, pool):
    """Config.group_m reorders which program computes which tile (rows grouped per column tile); every tile is
    still computed once: 5 row tiles (the last partial) x 3 column tiles, groups that do not divide them."""
    x, weight, bias, skip = (t.detach() for t in make(2, 5, 3, 9, 9, 12, 12, 40, "channels_last"))
    config = Config(32, 16, 16, 4, 1, group_m=group_m)
    nan = dict(fill_value=float("nan"), device=DEVICE)  # a tile never computed stays NaN
    out = torch.full((2, 40, 7, 7), **nan).contiguous(memory_format=torch.channels_last)
    pooled = torch.full((2, 40, 3, 3), **nan).contiguous(memory_format=torch.channels_last) if pool else None
    with exact_fp32():
        kernels.plan_forward(x, skip, kernels.pack_forward_weight(weight), bias, out, pooled, 0, False,
                             config=config).run()
    expected = oracle(x, weight, bias, skip, 0, pool=pool)
    assert_close(out, expected[0], dtype=torch.float32)
    if pool:
        assert_close(pooled, expected[1], dtype=torch.float32)


# NaN and infinities in the input, as aten treats them: relu(NaN) = NaN (F.relu), and a 2x2 window holding a
# NaN pools to NaN (F.max_pool2d), in every forward kernel and epilogue: the GEMM's (with and without skip and
# pool), the direct kernel, split-K's sum kernel, the TMA kernel. An inf spreads as +-inf (0 after the ReLU, or
# NaN where +inf meets -inf), a NaN to its 3x3 neighbourhood of outputs, whole and partly NaN pool windows.
@needs_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy's inf - inf
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, cout, padding, pool, direct, config, kernel", [
    pytest.param(2, 5, 0, 9, 11, 0, 0, 7, 0, False, False, None, "conv3x3_kernel", id="gemm"),
    pytest.param(2, 5, 3, 9, 11, 13, 14, 17, 1, True, False, None, "conv3x3_kernel", id="gemm-skip-pool-pad1"),
    pytest.param(2, 3, 0, 9, 10, 0, 0, 6, 0, True, True, None, "conv3x3_kernel", id="direct-pooled-takes-gemm"),
    pytest.param(2, 2, 0, 9, 11, 0, 0, 40, 1, False, True, None, "conv3x3_direct_kernel", id="direct-pad1"),
    pytest.param(2, 5, 3, 7, 9, 12, 14, 17, 0, False, False, Config(32, 16, 16, 4, 1, split_k=2),
                 "conv3x3_split_sum_kernel", id="split-k-skip"),
    pytest.param(2, 8, 4, 9, 21, 13, 25, 20, 1, False, False, TMA, "conv3x3_tma_kernel", id="tma-skip-pad1"),
])
def test_nan_and_inf_propagate_like_aten(batch, cx, cs, h, w, sh, sw, cout, padding, pool, direct, config, kernel):
    x, weight, bias, skip = (t.detach() if t is not None else None
                             for t in make(batch, cx, cs, h, w, sh, sw, cout, "channels_last"))
    nan, inf = float("nan"), float("inf")
    x[0, cx - 1, 3, 4] = nan
    x[1, 0, h - 3, w - 3] = inf
    x[1, cx - 1, h - 4, w - 2] = -inf  # overlaps the +inf's outputs: NaN where both reach
    x[0, 0, h - 1, 0] = inf            # a corner
    if skip is not None:
        top, left = (sh - h) // 2, (sw - w) // 2
        skip[1, cs - 1, top + 2, left + w // 2] = nan
        assert top > 0 and left > 0
        skip[0, 0, top - 1, left - 1] = nan  # the pixel diagonal to the window's corner, which a kernel reading
        skip[0, 0, 0, 0] = nan               # a halo of the skip beyond the window would take: reaches nothing
    with exact_fp32():
        out, pooled = kernels.conv3x3_forward(x, weight, bias, skip, padding, pool=pool, direct=direct, config=config)
        launch = kernels.plan_forward(x, skip, kernels.pack_forward_weight(weight), bias, out, pooled, padding,
                                      direct, config=config)
    assert (launch.then or launch).kernel is getattr(kernels, kernel)
    expected = oracle(x, weight, bias, skip, padding, pool)
    y = expected[0]
    assert y.isnan().any() and (y == inf).any() and (y == 0).any()
    assert_close(out, y, dtype=torch.float32, equal_nan=True, msg="y")
    if pool:
        share = F.avg_pool2d(y.isnan().double(), 2)  # windows partly NaN: a NaN must win over the numbers
        assert ((share > 0) & (share < 1)).any()
        assert_close(pooled, expected[1], dtype=torch.float32, equal_nan=True, msg="pooled")
        assert_close(pooled, F.max_pool2d(out, 2), rtol=0, atol=0, equal_nan=True, msg="pooled is max_pool2d(y)")


@needs_triton
def test_tma_applies_only_where_descriptors_can():
    """Elsewhere the same tiles run on the pointer kernel: pooled epilogues, TF32 rounding, NCHW or unaligned
    operands (x, skip's window, the packed weight)."""
    cl = torch.channels_last

    def case(cx=8, cs=0, size=10, skip_size=10, pooled=False, round_tf32=False, layout=cl, misaligned=False,
             cout=16):
        x = torch.randn(2, cx, size, size).contiguous(memory_format=layout)
        if misaligned:  # the same layout, 4 bytes into its storage
            x = torch.randn(x.numel() + 1)[1:].view(2, size, size, cx).permute(0, 3, 1, 2)
        skip = torch.randn(2, cs, skip_size, skip_size).contiguous(memory_format=cl) if cs else None
        window = geometry.center_crop(skip, (size, size)) if cs else None
        w_packed = torch.randn(9 * (cx + cs), cout)
        pool = torch.empty(1) if pooled else None
        return kernels.tma_applies(x, window, w_packed, pool, round_tf32, TMA)

    assert case() and case(cs=4, skip_size=14) and case(cs=4, skip_size=11)
    assert not case(misaligned=True)
    assert not case(pooled=True)
    assert not case(round_tf32=True)
    assert not case(layout=torch.contiguous_format)
    assert not case(cx=5)          # a pixel's 20 bytes: strides not 16-byte multiples
    assert not case(cout=6)        # weight rows of 24 bytes
    assert not case(cs=5, skip_size=14)  # skip's window: strides of 20 bytes
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=cl)
    for block_n, stages, right in ((128, 3, False), (256, 4, False), (128, 2, True), (64, 4, True)):
        tile = dataclasses.replace(TMA, block_n=block_n, num_stages=stages)  # raced on an H100: pointer kernel
        assert kernels.tma_applies(x, None, torch.randn(72, 256), None, False, tile) is right, tile


def test_default_implementations():
    """Triton where it compiles for the device and takes the dtype; never the interpreter, never float64."""
    cpu = torch.device("cpu")
    assert ops.backend("conv3x3_relu", cpu, torch.float32) == "composite"
    assert "triton" not in ops.implementations("conv3x3_relu", DEVICE, torch.float64)
    if DEVICE.type == "cuda":
        assert ops.backend("conv3x3_relu", DEVICE, torch.bfloat16) == "triton"


def test_float64_composite_and_gradcheck():
    """float64, which the Triton kernels do not take, runs the composite: gradcheck it, named."""
    x, weight, bias, skip = make(1, 2, 1, 5, 4, 7, 6, 2, "contiguous", dtype=torch.float64, device="cpu")
    assert torch.autograd.gradcheck(lambda *a: conv3x3_relu(a[0], a[1], a[2], skip=a[3], implementation="composite"),
                                    (x, weight, bias, skip))
    assert torch.autograd.gradcheck(lambda *a: conv3x3_relu(a[0], a[1], a[2], skip=a[3], pool=True, direct=True,
                                                            implementation="composite"), (x, weight, bias, skip))
    with pytest.raises(ValueError, match="implementation 'triton' cannot run on cpu tensors of torch.float64"):
        conv3x3_relu(x, weight, bias, skip=skip, implementation="triton")


def test_the_composite_with_a_skip_dispatches_only_aten(monkeypatch):
    """implementation="composite" is the tests' oracle and the users' way out of our kernels: its crop and
    concatenation of the skip input stay aten too, with gradients, where crop_concat's default is a kernel
    of ours (a GPU's Triton kernel, here in the interpreter)."""
    import importlib

    from torch.utils._python_dispatch import TorchDispatchMode

    crop_concat_module = importlib.import_module("unet_fast.ops.crop_concat")
    choose = crop_concat_module._backend
    monkeypatch.setattr(crop_concat_module, "_backend", lambda device, dtype, implementation:
                        "triton" if implementation is None else choose(device, dtype, implementation))

    class Namespaces(TorchDispatchMode):
        seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func.namespace)
            return func(*args, **(kwargs or {}))

    x, weight, bias, skip = make(2, 3, 2, 6, 7, 10, 9, 4, "channels_last")
    for t in (x, weight, bias, skip):
        t.requires_grad_(True)
    with Namespaces() as recorded:
        y = conv3x3_relu(x, weight, bias, skip=skip, implementation="composite")
        y.sum().backward()
    assert recorded.seen == {"aten"}, recorded.seen
    assert_close(y, oracle(x, weight, bias, skip, 0)[0].float(), dtype=torch.float32)


def test_input_precision_follows_cudnn_tf32_flag():
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        assert kernels.input_precision(torch.float32) == "ieee"
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        assert kernels.input_precision(torch.float32) == "tf32"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=torch.randn(3, 6, 6)), ValueError, "x must be a 4-D floating-point tensor"),
    (dict(x=torch.zeros(1, 3, 6, 6, dtype=torch.long)), ValueError, "floating-point"),
    (dict(weight=torch.randn(4, 3, 3, 3)), ValueError, r"weight must have shape \(C_out, 5, 3, 3\)"),
    (dict(bias=torch.randn(5)), ValueError, r"bias must be None or of shape \(4,\)"),
    (dict(skip=torch.randn(2, 2, 8, 8)), ValueError, "batch sizes differ"),
    (dict(skip=torch.randn(1, 2, 5, 8)), ValueError, "smaller than x"),
    (dict(skip=torch.randn(1, 2, 8, 8, dtype=torch.float64)), TypeError, "skip is torch.float64"),
    (dict(padding=2), ValueError, "padding must be 0"),
    (dict(x=torch.randn(1, 3, 2, 6)), ValueError, "at least 3"),
    (dict(pool="yes"), TypeError, "pool must be True or False, got 'yes'"),
    (dict(direct=1), TypeError, "direct must be True or False, got 1"),
    (dict(x=torch.randn(1, 3, 3, 6), skip=None, weight=torch.randn(4, 3, 3, 3), pool=True), ValueError,
     r"pool=True needs an output of at least 2x2 .* got output \(1, 4\)"),
    (dict(implementation="extension"), ValueError, "implementation 'extension' cannot run"),
    (dict(mask_input_grad="no"), TypeError, "mask_input_grad must be True or False, got 'no'"),
    (dict(output_grad_masked=1), TypeError, "output_grad_masked must be True or False, got 1"),
    (dict(output_grad_masked=True, pool=True), ValueError, "output_grad_masked=True cannot go with pool=True"),
])
def test_bad_inputs(kwargs, error, match):
    args = dict(x=torch.randn(1, 3, 6, 6), weight=torch.randn(4, 5, 3, 3), bias=torch.randn(4),
                skip=torch.randn(1, 2, 8, 8), padding=0, pool=False, direct=False, implementation=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        conv3x3_relu(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


# Every registered op, opcheck'd: fake kernels (shapes, strides, dtypes), autograd registration,
# and AOT dispatch with dynamic shapes, against the real kernels.
@needs_triton
@pytest.mark.parametrize("skip_channels, padding, direct", [(3, 0, False), (0, 1, False), (0, 0, True)])
def test_opcheck(skip_channels, padding, direct):
    cx = 1 if direct else 5
    x, weight, bias, skip = make(2, cx, skip_channels, 8, 9, 12, 14, 6, "channels_last")
    forward = (x, weight, bias, skip, padding, direct)
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu_triton.default, forward)
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu_pool_triton.default, forward)
    # the backward-only flags: x's gradient masked by x's ReLU, y's gradient taken as masked already
    relu_x = torch.relu(x.detach() - 0.2).requires_grad_()
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu_triton.default,
                          (relu_x, weight, bias, skip, padding, direct, False, True, True))
    grad = torch.randn(2, 6, 6 + 2 * padding, 7 + 2 * padding, device=DEVICE)
    plain = [t.detach() if t is not None else None for t in (weight, x, skip)]
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_input_grad_triton.default, (grad, *plain, padding))
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_weight_grad_triton.default, (grad, *plain[1:], padding))


@needs_triton
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph_outputs_and_gradients(dynamic):
    """torch.compile(fullgraph=True) of a U-Net's first conv (direct kernel), a decoder conv with skip and a
    pooled conv: the graphs hold our forward and backward ops, and the compiled outputs and gradients
    equal the oracle's (run by AOTAutograd's eager backend, here on the device's kernels)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = {}

    def record(name):
        def compiler(graph, example_inputs):
            graphs[name] = graph.code
            return make_boxed_func(graph)
        return compiler

    def fn(image, weight0, bias0, skip, weight, bias, weight2, bias2):
        x = conv3x3_relu(image, weight0, bias0, direct=True, implementation="triton")
        y = conv3x3_relu(x, weight, bias, skip=skip, implementation="triton")
        return conv3x3_relu(y, weight2, bias2, pool=True, implementation="triton")

    image, weight0, bias0, _ = make(2, 1, 0, 11, 12, 0, 0, 5, "channels_last")
    _, weight, bias, skip = make(2, 5, 3, 9, 10, 13, 12, 6, "channels_last")
    _, weight2, bias2, _ = make(1, 6, 0, 1, 1, 0, 0, 4, "contiguous")
    inputs = (image, weight0, bias0, skip, weight, bias, weight2, bias2)
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic,
                             backend=aot_autograd(fw_compiler=record("forward"), bw_compiler=record("backward")))
    with exact_fp32():
        got = compiled(*inputs)
        got_grads = torch.autograd.grad(got[0].sum() + got[1].sum(), inputs)

    def calls(graph, op):
        return graph.count(f"torch.ops.unet_fast.{op}.default(")

    assert calls(graphs["forward"], "conv3x3_relu_triton") == 2, graphs["forward"]
    assert calls(graphs["forward"], "conv3x3_relu_pool_triton") == 1, graphs["forward"]
    assert calls(graphs["backward"], "conv3x3_input_grad_triton") == 3, graphs["backward"]
    assert calls(graphs["backward"], "conv3x3_weight_grad_triton") == 3, graphs["backward"]
    (x,) = oracle(image, weight0, bias0, None, 0)
    (y,) = oracle(x, weight, bias, skip, 0)
    expected = oracle(y, weight2, bias2, None, 0, pool=True)
    want_grads = torch.autograd.grad(expected[0].sum() + expected[1].sum(), inputs)
    for name, o, e in zip(("y", "pooled"), got, expected):
        assert_close(o, e, dtype=torch.float32, msg=name)
    names = ("image", "weight0", "bias0", "skip", "weight", "bias", "weight2", "bias2")
    for name, g, r in zip(names, got_grads, want_grads):
        assert_close(g, r, dtype=torch.float32, msg=f"gradient of {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("cs", [0, 32])
def test_low_precision_error_within_twice_aten(dtype, cs):
    """flash-attention's criterion: error vs float64 at most about twice aten's in the same dtype."""
    x, weight, bias, skip = make(2, 48, cs, 37, 41, 45, 44, 80, "channels_last", device="cuda")
    grad = torch.randn(2, 80, 35, 39, device="cuda")
    inputs = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (x, weight, bias, skip)]
    (ref64,) = oracle(*inputs, 0)
    ref_low = conv3x3_relu_reference(*inputs)
    out = conv3x3_relu(inputs[0], inputs[1], inputs[2], skip=inputs[3])
    assert_within_twice_plain_error(out, ref_low, ref64, msg="output")
    differentiated = present(*inputs)
    g64 = torch.autograd.grad(ref64, differentiated, grad.double())
    g_low = torch.autograd.grad(ref_low, differentiated, grad.to(dtype))
    g_out = torch.autograd.grad(out, differentiated, grad.to(dtype))
    for name, a, b, c in zip(("x", "weight", "bias", "skip"), g_out, g_low, g64):
        assert_within_twice_plain_error(a, b, c, msg=f"gradient of {name}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("cx, cout, pool, direct", [(48, 80, True, False), (1, 64, False, True), (3, 64, True, True)])
def test_pool_and_direct_error_within_twice_aten(dtype, cx, cout, pool, direct):
    """The low-precision rule on tensor-core sizes; the pool's reference taken at our y's argmax."""
    x, weight, bias, _ = make(2, cx, 0, 37, 42, 0, 0, cout, "channels_last", device="cuda")
    inputs = [t.detach().to(dtype).requires_grad_() for t in (x, weight, bias)]
    got = conv3x3_relu(*inputs, pool=pool, direct=direct)
    got = got if pool else (got,)
    indices = F.max_pool2d(got[0].detach(), 2, return_indices=True)[1] if pool else None
    ref64 = oracle(*inputs, None, 0, pool, indices)
    plain = conv3x3_relu_reference(*inputs)
    ref_low = (plain, plain.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)) if pool else (plain,)
    for a, b, c in zip(got, ref_low, ref64):
        assert_within_twice_plain_error(a, b, c, msg="output")
    grads = [torch.randn_like(c) for c in ref64]
    g_got = torch.autograd.grad(got, inputs, [g.to(dtype) for g in grads])
    g_low = torch.autograd.grad(ref_low, inputs, [g.to(dtype) for g in grads])
    g64 = torch.autograd.grad(ref64, inputs, grads)
    for name, a, b, c in zip(("x", "weight", "bias"), g_got, g_low, g64):
        assert_within_twice_plain_error(a, b, c, msg=f"gradient of {name}")


def test_the_tf32_switch_is_a_constant_inside_a_compiled_graph():
    """The GPU dispatch reads cuDNN's TF32 switch, which dynamo cannot trace (a fullgraph compile of the
    model broke on it on an H200, run 4): it is read as a constant when traced, on any machine."""
    def scale(x):
        return x * (2.0 if kernels.input_precision(torch.float32, "cuda") == "tf32" else 1.0)

    compiled = torch.compile(scale, fullgraph=True, backend="eager")
    for allowed in (True, False):
        torch._dynamo.reset()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=allowed):
            assert compiled(torch.ones(3)).tolist() == [2.0 if allowed else 1.0] * 3


@pytest.mark.gpu
def test_compile_inductor_on_gpu():
    """Inductor (the default backend) compiles around our ops; outputs and gradients equal the oracle's."""
    x, weight, bias, skip = make(2, 5, 3, 7, 9, 12, 14, 17, "channels_last", device="cuda")
    compiled = torch.compile(lambda *a: conv3x3_relu(a[0], a[1], a[2], skip=a[3], pool=True), fullgraph=True)
    with exact_fp32():
        got = compiled(x, weight, bias, skip)
        grads = torch.autograd.grad(got[0].sum() + got[1].sum(), [x, weight, bias, skip])
    expected = oracle(x, weight, bias, skip, 0, pool=True)
    want = torch.autograd.grad(expected[0].sum() + expected[1].sum(), [x, weight, bias, skip])
    for name, o, e in zip(("y", "pooled"), got, expected):
        assert_close(o, e, dtype=torch.float32, msg=name)
    for name, g, r in zip(("x", "weight", "bias", "skip"), grads, want):
        assert_close(g, r, dtype=torch.float32, msg=f"gradient of {name}")


@needs_triton
@pytest.mark.parametrize("pool", [False, True], ids=["plain", "pool"])
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, cout, padding", [
    pytest.param(2, 5, 3, 7, 9, 12, 14, 17, 0, id="skip-odd-cout-17"),
    pytest.param(2, 20, 0, 6, 5, 0, 0, 40, 1, id="pad1-cout-40"),
])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_the_measured_cudnn_forward_matches_the_reference(batch, cx, cs, h, w, sh, sw, cout, padding, layout, pool,
                                                          monkeypatch):
    """Where the table picks cuDNN's forward (default implementation): cuDNN's convolution, then the bias, ReLU
    and pool in one Triton pass, behind the same op; its gradients are the op's backward."""
    chosen = []
    monkeypatch.setattr(kernels, "forward_prefers_aten", lambda *args, pool=False: chosen.append(pool) or True)
    monkeypatch.setattr(kernels, "conv3x3_forward", None)  # a Triton forward tile would fail loudly
    x, weight, bias, skip = make(batch, cx, cs, h, w, sh, sw, cout, layout)
    with exact_fp32():
        got = torch.ops.unet_fast.conv3x3_relu_pool_triton(x, weight, bias, skip, padding, False, True) if pool \
            else (torch.ops.unet_fast.conv3x3_relu_triton(x, weight, bias, skip, padding, False, True),)
        want = oracle(x, weight, bias, skip, padding, pool=pool)
        assert chosen == [pool]  # the table asked about the pooled problem where the forward pools
        for name, g, r in zip(("y", "pooled"), got, want):
            assert g.is_contiguous(memory_format=torch.channels_last), name
            assert_close(g, r, dtype=torch.float32, msg=name)
        grads = [torch.randn(r.shape, generator=torch.Generator().manual_seed(i)).to(DEVICE) for i, r in enumerate(want)]
        inputs = present(x, weight, bias, skip)
        for g, r in zip(torch.autograd.grad(got, inputs, grads), torch.autograd.grad(want, inputs, grads)):
            assert_close(g, r, dtype=torch.float32)
    op = torch.ops.unet_fast.conv3x3_relu_pool_triton if pool else torch.ops.unet_fast.conv3x3_relu_triton
    torch.library.opcheck(op.default, (x, weight, bias, skip, padding, False, True))  # fake kernel: same strides


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16_interpreter)])
@pytest.mark.parametrize("h, w", [(7, 9), (1, 1), (4, 6)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_relu_pool_pass_matches_aten(h, w, dtype, with_bias):
    """The cuDNN forward's epilogue pass alone: relu(z + bias) in place and the pool, aten's NaN rules."""
    from unet_fast.ops.triton.bias_relu import bias_relu_
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 37, h, w, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    z[1, 3, 0, 0] = float("nan")  # relu passes it; the pool's window takes it
    bias = (torch.randn(37, generator=g) * 0.5).to(DEVICE, dtype) if with_bias else None
    want = F.relu(z.float() + (bias.float()[:, None, None] if with_bias else 0)).to(dtype)
    pooled = bias_relu_(z, bias, pool=True)
    assert_close(z, want, dtype=dtype, equal_nan=True)
    assert pooled.shape == (2, 37, h // 2, w // 2) and pooled.is_contiguous(memory_format=torch.channels_last)
    if h >= 2 and w >= 2:
        assert_close(pooled, F.max_pool2d(want.float(), 2).to(dtype), dtype=dtype, equal_nan=True)
        assert pooled[1, 3, 0, 0].isnan()
    nchw = torch.randn(2, 5, h, w, generator=g).to(DEVICE, dtype)  # any layout, in place
    expected = F.relu(nchw)
    assert bias_relu_(nchw, None) is None
    assert torch.equal(nchw, expected)


@needs_triton
@pytest.mark.parametrize("tile, pooled_tile", [((256, 128), (128, 128)), ((128, 256), (64, 256)),
                                               ((256, 64), (256, 64)), ((128, 128), (128, 128))])
def test_the_pooled_epilogue_takes_at_most_128x128_accumulators(tile, pooled_tile):
    """A table tile of more accumulators than 128 x 128 runs pooled with fewer rows (the 256 x 128 spilled on
    sm_90 with the pool's epilogue); unpooled it is kept."""
    x = torch.empty(2, 16, 12, 12, device="meta").contiguous(memory_format=torch.channels_last)
    out = torch.empty(2, 8, 10, 10, device="meta").contiguous(memory_format=torch.channels_last)
    pooled = torch.empty(2, 8, 5, 5, device="meta").contiguous(memory_format=torch.channels_last)
    w_packed = torch.empty(9 * 16, 8, device="meta")
    config = Config(*tile, 64, 8, 3)
    for pool, want in ((None, tile), (pooled, pooled_tile)):
        launch = kernels.plan_forward(x, None, w_packed, None, out, pool, 0, False, device_type="cuda", config=config)
        assert (launch.meta["BLOCK_M"], launch.meta["BLOCK_N"]) == want, (pool is not None, tile)


@needs_triton
@pytest.mark.parametrize("route", ["triton", "measured-cudnn"])
def test_a_strided_or_expanded_bias_is_read_as_its_values(route, monkeypatch):
    """The kernels read the bias as C_out consecutive values: a strided view or an expanded scalar is copied
    first (it read the wrong values, or past the storage of an expanded one)."""
    if route == "measured-cudnn":
        monkeypatch.setattr(kernels, "forward_prefers_aten", lambda *args, **kwargs: True)
    x, weight, _, skip = make(2, 5, 3, 7, 9, 12, 14, 4, "channels_last")
    for bias in (torch.randn(8, generator=torch.Generator().manual_seed(5))[::2].to(DEVICE),
                 torch.tensor([0.7], device=DEVICE).expand(4)):
        with exact_fp32():
            for pool in (False, True):
                op = torch.ops.unet_fast.conv3x3_relu_pool_triton if pool else torch.ops.unet_fast.conv3x3_relu_triton
                got = op(x.detach(), weight.detach(), bias, skip.detach(), 0, False, route != "triton")
                got = got if pool else (got,)
                want = oracle(x, weight, bias, skip, 0, pool=pool)
                for g, r in zip(got, want):
                    assert_close(g, r, dtype=torch.float32, msg=f"bias strides {bias.stride()}")


@needs_triton
def test_the_cudnn_route_keeps_the_inputs_dtype_under_autocast(monkeypatch):
    """The op called directly under autocast with float32 inputs: float32 out, as its fake kernel and the Triton
    route say (cuDNN's conv inside it must not autocast)."""
    monkeypatch.setattr(kernels, "forward_prefers_aten", lambda *args, **kwargs: True)
    x, weight, bias, skip = make(1, 3, 0, 6, 6, 0, 0, 4, "channels_last")
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y = torch.ops.unet_fast.conv3x3_relu_triton(x.detach(), weight.detach(), bias.detach(), None, 0, False, True)
    assert y.dtype == torch.float32


@needs_triton
def test_double_backward_through_cudnn_backward_parts(monkeypatch):
    """Where the table gives the backward to cuDNN, create_graph=True gives a differentiable gradient (aten's
    mask and bias sum: the Triton passes have no derivative of their own)."""
    monkeypatch.setattr(kernels, "backward_prefers_aten", lambda *args: (True, True))
    x, weight, bias, _ = make(2, 3, 0, 7, 8, 0, 0, 5, "channels_last")
    with exact_fp32():
        y = torch.ops.unet_fast.conv3x3_relu_triton(x, weight, bias, None, 0, False, True)
        (gw,) = torch.autograd.grad((y ** 2).sum(), [weight], create_graph=True)
        (ggx,) = torch.autograd.grad(gw.sum(), [x])
    y_ref = oracle(x, weight, bias, None, 0)[0]
    (gw_ref,) = torch.autograd.grad((y_ref ** 2).sum(), [weight], create_graph=True)
    (ggx_ref,) = torch.autograd.grad(gw_ref.sum(), [x])
    assert_close(gw, gw_ref, dtype=torch.float32)
    assert_close(ggx, ggx_ref, dtype=torch.float32)


@needs_triton
def test_double_backward_through_cudnn_backward_parts_of_a_pooled_layer(monkeypatch):
    """The same for an encoder's pooled layer (UNet's default on a GPU): its backward ran the fused Triton pool
    backward under create_graph too, which has no derivative ("no autograd formula was registered")."""
    monkeypatch.setattr(kernels, "backward_prefers_aten", lambda *args: (True, True))
    x, weight, bias, _ = make(2, 3, 0, 7, 10, 0, 0, 5, "channels_last")
    with exact_fp32():
        y, pooled = torch.ops.unet_fast.conv3x3_relu_pool_triton(x, weight, bias, None, 0, False, True)
        (gw,) = torch.autograd.grad((y ** 2).sum() + (pooled ** 3).sum(), [weight], create_graph=True)
        (ggx,) = torch.autograd.grad(gw.sum(), [x])
    y_ref, pooled_ref = oracle(x, weight, bias, None, 0, pool=True)
    (gw_ref,) = torch.autograd.grad((y_ref ** 2).sum() + (pooled_ref ** 3).sum(), [weight], create_graph=True)
    (ggx_ref,) = torch.autograd.grad(gw_ref.sum(), [x])
    assert_close(gw, gw_ref, dtype=torch.float32)
    assert_close(ggx, ggx_ref, dtype=torch.float32)
