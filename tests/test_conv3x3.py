"""conv3x3_relu: the Triton kernels (interpreter on CPU, compiled on CUDA) against the aten composite."""
import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops import conv3x3_relu
from unet_fast.ops.conv3x3 import conv3x3_relu_reference, triton_usable
from unet_fast.ops.triton import conv3x3 as kernels
from tolerances import assert_close, relative_error
from triton_device import DEVICE, exact_fp32, needs_triton

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


@needs_triton
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, cout, padding", CASES)
def test_forward_and_backward_match_aten(batch, cx, cs, h, w, sh, sw, cout, padding, layout):
    x, weight, bias, skip = make(batch, cx, cs, h, w, sh, sw, cout, layout)
    with exact_fp32():
        out = conv3x3_relu(x, weight, bias, skip=skip, padding=padding)
        expected = conv3x3_relu_reference(x, weight, bias, skip, padding)
    assert out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, expected)
    assert (expected == 0).any() and (expected > 0).any()  # the ReLU mask matters in backward
    inputs = [t for t in (x, weight, bias, skip) if t is not None]
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with exact_fp32():
        got = torch.autograd.grad(out, inputs, grad)
        want = torch.autograd.grad(expected, inputs, grad)
    for name, g, r in zip(("x", "weight", "bias", "skip"), got, want):
        assert g.shape == r.shape, name
        assert_close(g, r), name


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
                 (torch.bfloat16, "channels_last"), (torch.bfloat16, "strided")]


def composite_with_pool(x, weight, bias, skip, padding, pool, indices=None):
    """conv2d + relu (+ max_pool2d); with ``indices`` the pool takes y at those argmax positions."""
    y = conv3x3_relu_reference(x, weight, bias, skip, padding)
    if not pool:
        return (y,)
    if indices is None:
        return y, F.max_pool2d(y, 2)
    return y, y.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)


@needs_triton
@pytest.mark.parametrize("dtype, layout", DTYPE_LAYOUTS, ids=[f"{str(d)[6:]}-{l}" for d, l in DTYPE_LAYOUTS])
@pytest.mark.parametrize("batch, cx, cs, h, w, sh, sw, cout, padding, pool, direct", OPTION_CASES)
def test_pool_and_direct_match_aten(batch, cx, cs, h, w, sh, sw, cout, padding, pool, direct, dtype, layout):
    """Forward and every gradient (both outputs' gradients flowing) against conv2d + relu + max_pool2d.

    fp32: within the tolerance table. bf16: outputs within the table; gradients by the low-precision
    rule (error against float64 at most about twice aten's in bf16), with the reference's pool taken
    at our y's argmax: a near-tie within one bf16 rounding may rightly pick another pixel of the window.
    """
    x, weight, bias, skip = make(batch, cx, cs, h, w, sh, sw, cout, layout, dtype=dtype)
    inputs = [t for t in (x, weight, bias, skip) if t is not None]
    with exact_fp32():
        got = conv3x3_relu(x, weight, bias, skip=skip, padding=padding, pool=pool, direct=direct)
        expected = composite_with_pool(x, weight, bias, skip, padding, pool)
    got = got if pool else (got,)
    for o, e in zip(got, expected):
        assert o.shape == e.shape and o.dtype == dtype
        assert o.is_contiguous(memory_format=torch.channels_last)
        assert_close(o, e)
    if pool:  # the epilogue's pool is exactly max_pool2d of the y it wrote
        assert torch.equal(got[1], F.max_pool2d(got[0], 2))
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(e.shape, generator=g).to(DEVICE, dtype) for e in expected]
    with exact_fp32():
        got_grads = torch.autograd.grad(got, inputs, grads)
    if dtype == torch.float32:
        with exact_fp32():
            want_grads = torch.autograd.grad(expected, inputs, grads)
        for a, b in zip(got_grads, want_grads):
            assert a.shape == b.shape
            assert_close(a, b)
        return
    indices = F.max_pool2d(got[0].detach(), 2, return_indices=True)[1] if pool else None
    want_grads = torch.autograd.grad(composite_with_pool(x, weight, bias, skip, padding, pool, indices), inputs, grads)
    inputs64 = [t.detach().double().requires_grad_() for t in (x, weight, bias, skip) if t is not None]
    skip64 = inputs64[3] if skip is not None else None
    expected64 = composite_with_pool(inputs64[0], inputs64[1], inputs64[2], skip64, padding, pool, indices)
    grads64 = torch.autograd.grad(expected64, inputs64, [t.double() for t in grads])
    for a, b, c in zip(got_grads, want_grads, grads64):
        assert a.shape == c.shape
        assert relative_error(a, c) <= 2 * relative_error(b, c) + 1e-6


@needs_triton
def test_pool_gradient_ties_break_like_max_pool2d():
    """A constant y (zero weight, positive bias): every window ties; the weight gradient shows which
    pixel of each window received the pool's gradient, and must match aten's choice."""
    x, weight, bias, _ = make(2, 3, 0, 9, 8, 0, 0, 5, "channels_last")
    with torch.no_grad():
        weight.zero_()
        bias.abs_().add_(0.5)
    with exact_fp32():
        _, pooled = conv3x3_relu(x, weight, bias, pool=True)
        _, pooled_ref = composite_with_pool(x, weight, bias, None, 0, True)
    assert torch.equal(pooled, pooled_ref)
    grad = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    with exact_fp32():  # our wgrad in exact fp32 too: on a GPU it would otherwise run in TF32
        (got,) = torch.autograd.grad(pooled, [weight], grad)
        (want,) = torch.autograd.grad(pooled_ref, [weight], grad)
    assert_close(got, want)


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
        out = conv3x3_relu(x.detach(), weight, None, skip=skip.detach())
        (grad_weight,) = torch.autograd.grad(out.sum(), [weight])
        expected = conv3x3_relu_reference(x.detach(), weight, None, skip.detach())
        (want,) = torch.autograd.grad(expected.sum(), [weight])
    assert_close(grad_weight, want)


@needs_triton
@pytest.mark.parametrize("padding", [0, 1])
def test_launchers_directly(padding):
    """The kernels without autograd: dgrad splits its output between grad_skip's window and grad_x."""
    x, weight, _, skip = (t.detach() for t in make(2, 3, 2, 7, 8, 11, 10, 5, "channels_last"))
    grad = torch.randn(2, 5, 5 + 2 * padding, 6 + 2 * padding, device=DEVICE)
    with exact_fp32():
        grad_x, grad_skip = kernels.conv3x3_input_grad(grad, weight, x, skip, padding)
        grad_weight, grad_bias = kernels.conv3x3_weight_grad(grad, x, skip, padding, bias_grad=True)
    assert_close(grad_bias, grad.sum((0, 2, 3)), msg="bias gradient from the wgrad kernel")
    cat = torch.cat([skip[:, :, 2:9, 1:9], x], dim=1).requires_grad_()
    weight.requires_grad_()
    with exact_fp32():
        ref = torch.nn.functional.conv2d(cat, weight, padding=padding)
        want_cat, want_weight = torch.autograd.grad(ref, [cat, weight], grad)
    assert_close(grad_x, want_cat[:, 2:])
    assert_close(grad_skip[:, :, 2:9, 1:9], want_cat[:, :2])
    grad_skip[:, :, 2:9, 1:9] = 0
    assert not grad_skip.any()  # zero outside the window
    assert_close(grad_weight, want_weight)


@needs_triton
def test_kernel_path_is_taken():
    assert triton_usable(DEVICE, torch.float32)
    assert not triton_usable(DEVICE, torch.float64)


def test_float64_composite_and_gradcheck():
    """float64 (and any device Triton cannot run on) takes the aten composite."""
    x, weight, bias, skip = make(1, 2, 1, 5, 4, 7, 6, 2, "contiguous", dtype=torch.float64, device="cpu")
    assert torch.autograd.gradcheck(lambda *a: conv3x3_relu(a[0], a[1], a[2], skip=a[3]), (x, weight, bias, skip))
    assert torch.autograd.gradcheck(lambda *a: conv3x3_relu(a[0], a[1], a[2], skip=a[3], pool=True, direct=True),
                                    (x, weight, bias, skip))


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
])
def test_bad_inputs(kwargs, error, match):
    args = dict(x=torch.randn(1, 3, 6, 6), weight=torch.randn(4, 5, 3, 3), bias=torch.randn(4),
                skip=torch.randn(1, 2, 8, 8), padding=0, pool=False, direct=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        conv3x3_relu(args["x"], args["weight"], args["bias"], skip=args["skip"], padding=args["padding"],
                     pool=args["pool"], direct=args["direct"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("cs", [0, 32])
def test_low_precision_error_within_twice_aten(dtype, cs):
    """flash-attention's criterion: error vs float64 at most about twice aten's in the same dtype."""
    x, weight, bias, skip = make(2, 48, cs, 37, 41, 45, 44, 80, "channels_last", device="cuda")
    grad = torch.randn(2, 80, 35, 39, device="cuda")
    inputs64 = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias, skip)]
    inputs = [t.detach().to(dtype).requires_grad_() if t is not None else None for t in (x, weight, bias, skip)]
    ref64 = conv3x3_relu_reference(*inputs64)
    ref_low = conv3x3_relu_reference(*inputs)
    out = conv3x3_relu(inputs[0], inputs[1], inputs[2], skip=inputs[3])
    assert relative_error(out, ref64) <= 2 * relative_error(ref_low, ref64) + 1e-6
    present = [i for i, t in enumerate(inputs) if t is not None]
    g64 = torch.autograd.grad(ref64, [inputs64[i] for i in present], grad.double())
    g_low = torch.autograd.grad(ref_low, [inputs[i] for i in present], grad.to(dtype))
    g_out = torch.autograd.grad(out, [inputs[i] for i in present], grad.to(dtype))
    for a, b, c in zip(g_out, g_low, g64):
        assert relative_error(a, c) <= 2 * relative_error(b, c) + 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("cx, cout, pool, direct", [(48, 80, True, False), (1, 64, False, True), (3, 64, True, True)])
def test_pool_and_direct_error_within_twice_aten(dtype, cx, cout, pool, direct):
    """The low-precision rule on tensor-core sizes; the pool's reference taken at our y's argmax."""
    x, weight, bias, _ = make(2, cx, 0, 37, 42, 0, 0, cout, "channels_last", device="cuda")
    inputs64 = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    inputs = [t.detach().to(dtype).requires_grad_() for t in (x, weight, bias)]
    got = conv3x3_relu(*inputs, pool=pool, direct=direct)
    got = got if pool else (got,)
    indices = F.max_pool2d(got[0].detach(), 2, return_indices=True)[1] if pool else None
    ref_low = composite_with_pool(*inputs, None, 0, pool, indices)
    ref64 = composite_with_pool(*inputs64, None, 0, pool, indices)
    for a, b, c in zip(got, ref_low, ref64):
        assert relative_error(a, c) <= 2 * relative_error(b, c) + 1e-6
    grads = [torch.randn_like(c) for c in ref64]
    g_got = torch.autograd.grad(got, inputs, [g.to(dtype) for g in grads])
    g_low = torch.autograd.grad(ref_low, inputs, [g.to(dtype) for g in grads])
    g64 = torch.autograd.grad(ref64, inputs64, grads)
    for a, b, c in zip(g_got, g_low, g64):
        assert relative_error(a, c) <= 2 * relative_error(b, c) + 1e-6


@pytest.mark.gpu
def test_opcheck_and_compile_fullgraph_pool_and_direct():
    from torch._inductor.utils import run_and_get_code  # a private helper, needed only where this runs (a GPU)

    x, weight, bias, skip = make(2, 5, 3, 8, 9, 12, 14, 17, "channels_last", device="cuda")
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu_pool.default, (x, weight, bias, skip, 0, False))
    x1, weight1, bias1, _ = make(2, 1, 0, 11, 10, 0, 0, 8, "channels_last", device="cuda")
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu.default, (x1, weight1, bias1, None, 0, True))
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu_pool.default, (x1, weight1, bias1, None, 1, True))
    # pool=True: the pooled GEMM (direct is ignored when pooling, by design)
    compiled = torch.compile(lambda *a: conv3x3_relu(*a, pool=True, direct=True), fullgraph=True)
    with exact_fp32():
        got = compiled(x1, weight1, bias1)
        expected = composite_with_pool(x1, weight1, bias1, None, 0, True)
    for o, e in zip(got, expected):
        assert_close(o, e)
    with exact_fp32():
        grads = torch.autograd.grad(got[0].sum() + got[1].sum(), [x1, weight1, bias1])
        want = torch.autograd.grad(expected[0].sum() + expected[1].sum(), [x1, weight1, bias1])
    for g, r in zip(grads, want):
        assert_close(g, r)
    # unpooled: the direct kernel itself, compiled (its name in Inductor's generated code says it is the one)
    compiled_direct = torch.compile(lambda *a: conv3x3_relu(*a, direct=True), fullgraph=True)
    with exact_fp32():
        out, codes = run_and_get_code(compiled_direct, x1, weight1, bias1)
        expected = conv3x3_relu_reference(x1, weight1, bias1)
    assert any("conv3x3_direct_kernel" in code for code in codes), "the direct kernel was not compiled"
    assert_close(out, expected)
    with exact_fp32():
        grads = torch.autograd.grad(out.sum(), [x1, weight1, bias1])
        want = torch.autograd.grad(expected.sum(), [x1, weight1, bias1])
    for g, r in zip(grads, want):
        assert_close(g, r)


@pytest.mark.gpu
def test_opcheck_and_compile_fullgraph():
    x, weight, bias, skip = make(2, 5, 3, 7, 9, 12, 14, 17, "channels_last", device="cuda")
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu.default, (x, weight, bias, skip, 0))
    torch.library.opcheck(torch.ops.unet_fast.conv3x3_relu.default, (x, weight[:, 3:].contiguous(), None, None, 1))
    compiled = torch.compile(lambda *a: conv3x3_relu(a[0], a[1], a[2], skip=a[3]), fullgraph=True)
    with exact_fp32():
        out = compiled(x, weight, bias, skip)
        expected = conv3x3_relu_reference(x, weight, bias, skip)
    assert_close(out, expected)
    with exact_fp32():
        grads = torch.autograd.grad(out.sum(), [x, weight, bias, skip])
        want = torch.autograd.grad(expected.sum(), [x, weight, bias, skip])
    for g, r in zip(grads, want):
        assert_close(g, r)
