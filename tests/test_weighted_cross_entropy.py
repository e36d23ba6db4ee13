"""weighted_softmax_cross_entropy: every implementation against a float64 NumPy oracle.

Oracle: log-sum-exp, softmax and the weighted reductions written out in NumPy, in float64.
Implementations: the composite, the C++ CPU kernel (op unet_fast::weighted_cross_entropy), the
Triton kernel (op unet_fast::weighted_cross_entropy_triton; CUDA, or the CPU under the interpreter)
and, on a GPU, the CUDA C++ kernel: each reached by the public function's ``implementation`` and,
for opcheck and the raw outputs, by calling its torch op directly.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tolerances import TOLERANCES, assert_close, relative_error

from unet_fast import ops, reference
from unet_fast.losses import WeightedSoftmaxCrossEntropy
from unet_fast.ops import weighted_softmax_cross_entropy
from triton_device import DEVICE

REDUCTIONS = ["none", "mean", "sum"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
IMPLEMENTATIONS = ["composite", "extension", "triton"]


@pytest.fixture(autouse=True)
def no_pending_value_checks():
    """A deferred check (CUDA's default) left by one test must not raise in the next."""
    from unet_fast.ops import weighted_cross_entropy as module

    yield
    module._pending.clear()
OPS = {"extension": "weighted_cross_entropy", "triton": "weighted_cross_entropy_triton"}


def make_inputs(shape, dtype=torch.float32, scale=3.0, ignore_index=-100, with_weight=True, layout="contiguous",
                target_dtype=torch.int64, device=DEVICE, seed=0):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=g) * scale).to(dtype)
    target = torch.randint(0, c, (n, h, w), generator=g)
    if ignore_index is not None:
        target[torch.rand(n, h, w, generator=g) < 0.2] = ignore_index
    weight = torch.rand(n, h, w, generator=g) * 5 if with_weight else None
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # views with gaps in every argument
        logits = torch.cat([logits, logits], dim=-1)[..., ::2]
        target = target.transpose(-1, -2).contiguous().transpose(-1, -2)
        weight = torch.cat([weight, weight], dim=-2)[..., ::2, :] if weight is not None else None
    return logits.to(device), target.to(target_dtype).to(device), weight.to(device) if weight is not None else None


def oracle(logits, target, weight, reduction, ignore_index=-100):
    """(loss, gradient of loss.sum() w.r.t. logits), float64 NumPy, from the definition."""
    x = logits.detach().cpu().double().numpy()
    t = target.cpu().numpy().astype(np.int64)
    w = np.ones(t.shape) if weight is None else weight.detach().cpu().double().numpy()
    kept = t != ignore_index
    peak = x.max(axis=1, keepdims=True)
    log_sum_exp = peak[:, 0] + np.log(np.exp(x - peak).sum(axis=1))
    picked = np.take_along_axis(x, np.where(kept, t, 0)[:, None], axis=1)[:, 0]
    loss = np.where(kept, (log_sum_exp - picked) * w, 0.0)
    onehot = np.arange(x.shape[1])[None, :, None, None] == t[:, None]
    grad = np.where(kept[:, None], (np.exp(x - log_sum_exp[:, None]) - onehot) * w[:, None], 0.0)
    if reduction == "none":
        return torch.from_numpy(loss), torch.from_numpy(grad)
    scale = max(int(kept.sum()), 1) if reduction == "mean" else 1
    return torch.tensor(loss.sum() / scale), torch.from_numpy(grad / scale)


def run(logits, target, weight, reduction, ignore_index=-100, implementation=None, loss_fn=None):
    """(loss, gradient of loss.sum() w.r.t. the logits) of the public function (or ``loss_fn``)."""
    x = logits.detach().clone().requires_grad_()
    if loss_fn is None:
        loss = weighted_softmax_cross_entropy(x, target, weight, reduction=reduction, ignore_index=ignore_index,
                                              implementation=implementation)
    else:
        loss = loss_fn(x, target, weight)
    grad, = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def check_against_oracle(logits, target, weight, reduction, ignore_index=-100, implementation=None, loss_fn=None):
    loss, grad = run(logits, target, weight, reduction, ignore_index, implementation, loss_fn)
    want_loss, want_grad = oracle(logits, target, weight, reduction, ignore_index)
    loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    case = f"{implementation} {logits.dtype} {reduction} {tuple(logits.shape)}"
    assert loss.dtype == loss_dtype and loss.shape == want_loss.shape, case
    assert grad.dtype == logits.dtype and grad.shape == logits.shape, case
    # the loss is computed in fp32 (fp64) from the given logits: that dtype's tolerance
    assert_close(loss.cpu(), want_loss, dtype=loss_dtype, msg=case)
    if logits.dtype in (torch.float32, torch.float64):
        assert_close(grad.cpu(), want_grad, msg=case)
    else:  # the gradient is rounded to the logits' dtype: judge it by its relative error
        assert relative_error(grad.cpu(), want_grad) <= TOLERANCES[logits.dtype][0], case


def skip_unless_runnable(implementation, dtype=torch.float32, device=DEVICE):
    if implementation not in ops.implementations("weighted_cross_entropy", torch.device(device), dtype):
        pytest.skip(f"no {implementation} implementation of the loss for {device} {dtype} here")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("channels", [2, 7])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_oracle(implementation, dtype, reduction, channels, layout):
    skip_unless_runnable(implementation, dtype)
    logits, target, weight = make_inputs((2, channels, 13, 17), dtype, layout=layout)
    check_against_oracle(logits, target, weight, reduction, implementation=implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (3, 1, 5, 3), (2, 32, 9, 11), (2, 2, 64, 129)])
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("ignore_index", [-100, 1, None])
def test_shapes_weights_and_ignore_index(implementation, shape, with_weight, ignore_index):
    # one class; (2, 2, 64, 129) spans several 4096-pixel (CPU) and 1024-pixel (Triton) blocks, partial last
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs(shape, ignore_index=ignore_index, with_weight=with_weight)
    for reduction in REDUCTIONS:
        check_against_oracle(logits, target, weight, reduction, -100 if ignore_index is None else ignore_index,
                             implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_target_and_weight_dtypes(implementation, target_dtype, weight_dtype):
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs((2, 3, 11, 7), ignore_index=255, target_dtype=target_dtype)
    check_against_oracle(logits, target, weight.to(weight_dtype), "mean", 255, implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_logits_are_stable(implementation, dtype):
    skip_unless_runnable(implementation, dtype)
    logits, target, weight = make_inputs((2, 3, 8, 9), dtype, scale=1e4 if dtype == torch.float16 else 1e30)
    loss, grad = run(logits, target, weight, "none", implementation=implementation)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    check_against_oracle(logits, target, weight, "none", implementation=implementation)


def special_logits(channels, dtype, layout):
    """Logits (1, C, 3, 9) with NaN, +inf and -inf at chosen pixels and channels, targets that pick
    and miss them (some ignored), and a weight that is 0 at some of them."""
    nan, inf = float("nan"), float("inf")
    logits = torch.randn(1, channels, 3, 9, generator=torch.Generator().manual_seed(0)) * 2
    last = channels - 1
    for w, (c, value) in enumerate([(0, nan), (last, nan), (0, inf), (last, inf), (None, -inf), (0, -inf),
                                    (last, -inf), (None, nan), (None, None)]):
        if value is not None:
            logits[0, slice(None) if c is None else c, :, w] = value
    target = torch.tensor([[0] * 9, [last] * 9, [-100] * 9])
    weight = torch.rand(1, 3, 9, generator=torch.Generator().manual_seed(1)) + 0.5
    weight[0, 1, ::2] = 0
    logits = logits.to(dtype)
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    return logits.to(DEVICE), target[None].to(DEVICE), weight.to(DEVICE)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the interpreter's numpy
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("channels", [1, 2, 5])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_and_infinity_propagate_as_in_aten(implementation, dtype, channels, layout):
    """A NaN logit, or an infinite largest logit, makes its pixel's loss and gradient NaN exactly where
    aten's F.cross_entropy(...) * weight does (a finite loss there would hide a diverging run)."""
    skip_unless_runnable(implementation, dtype)
    logits, target, weight = special_logits(channels, dtype, layout)
    x = logits.detach().clone().requires_grad_()
    want = F_cross_entropy(x, target, weight)
    want_grad, = torch.autograd.grad(want.sum(), x)
    loss, grad = run(logits, target, weight, "none", implementation=implementation)
    case = f"{implementation} {dtype} C={channels} {layout}"
    assert torch.equal(loss.isnan().cpu(), want.isnan().cpu()), f"{case}: loss NaN at {loss.isnan()} want {want.isnan()}"
    assert torch.equal(grad.isnan().cpu(), want_grad.isnan().cpu()), case
    finite = want.isfinite()
    assert torch.equal(loss.isinf(), want.isinf()), case
    assert_close(loss[finite].cpu(), want[finite].detach().cpu(), dtype=dtype, msg=case)
    for reduction in ("mean", "sum"):
        total, _ = run(logits, target, weight, reduction, implementation=implementation)
        assert total.isnan().item(), f"{case} {reduction}: {total.item()}"


def F_cross_entropy(logits, target, weight):
    """aten's loss, per pixel, in the kernels' accumulation type."""
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.nn.functional.cross_entropy(logits.to(compute), target, reduction="none") * weight.to(compute)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_pixel_ignored_gives_zero(implementation):
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs((1, 2, 4, 5))
    target.fill_(-100)
    loss, grad = run(logits, target, weight, "mean", implementation=implementation)
    assert loss.item() == 0 and not grad.any()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(0, 2, 4, 5), (2, 3, 0, 5), (1, 2, 4, 0)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_pixels(implementation, shape, reduction):
    """An empty batch or image: loss 0 ("none": empty) and an empty gradient, as aten's (Triton's launcher
    reduced a zero-length array of per-program results and raised)."""
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs(shape)
    check_against_oracle(logits, target, weight, reduction, implementation=implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("ignore_index", [256, -256, -255])
def test_uint8_target_compares_with_ignore_index_unwrapped(implementation, ignore_index):
    """torch compares a uint8 tensor with an int wrapped mod 256: the composite counted the pixels of class 0 (1)
    as ignored in "mean"'s divisor for ignore_index 256 or -256 (-255), halving the loss, which aten's
    cross-entropy and the kernels did not ignore."""
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs((2, 3, 5, 6), ignore_index=None)
    check_against_oracle(logits, target.to(torch.uint8), weight, "mean", ignore_index, implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_uint8_target_that_wraps_onto_ignore_index_is_named(implementation):
    """156 in a uint8 target is no class of 2 and not ignore_index -100 (which it equals mod 256)."""
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs((1, 2, 3, 4), ignore_index=None)
    target = target.to(torch.uint8)
    target[0, 1, 2] = 156
    with pytest.raises(IndexError, match=r"value 156 at \(n=0, h=1, w=2\)"):
        weighted_softmax_cross_entropy(logits, target, weight, implementation=implementation)


@pytest.mark.parametrize("op", list(OPS))
def test_op_outputs_without_a_gradient(op):
    """compute_grad=False: an empty gradient and the count of non-ignored pixels, the same from every kernel."""
    skip_unless_runnable(op)
    logits, target, weight = make_inputs((2, 3, 6, 7))
    loss, grad, count, _ = getattr(torch.ops.unet_fast, OPS[op])(logits, target, weight, 1, -100, False)
    assert grad.numel() == 0 and count.dtype == torch.int64 and count.item() == (target != -100).sum().item()
    assert_close(loss.cpu(), oracle(logits, target, weight, "mean")[0], dtype=torch.float32)


@pytest.mark.parametrize("op", list(OPS))
def test_deterministic_across_thread_counts(op):
    skip_unless_runnable(op)
    logits, target, weight = make_inputs((2, 2, 100, 123), scale=10)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(getattr(torch.ops.unet_fast, OPS[op])(logits, target, weight, 2, -100, True)[:2])
    finally:
        torch.set_num_threads(threads)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_weight_that_needs_a_gradient_gets_it():
    """Only the composite differentiates the weight: the default takes it, and naming a kernel is refused."""
    logits, target, weight = make_inputs((2, 3, 5, 6))
    weight.requires_grad_()
    loss = weighted_softmax_cross_entropy(logits, target, weight, reduction="sum")
    grad, = torch.autograd.grad(loss, weight)
    assert_close(grad.cpu(), oracle(logits, target, None, "none")[0], dtype=torch.float32)
    with pytest.raises(ValueError, match="weight requires a gradient, which only implementation 'composite' gives"):
        weighted_softmax_cross_entropy(logits, target, weight, implementation="triton")


def test_default_implementation_on_the_cpu():
    """The compiled kernel where the extension is built; never Triton's interpreter by default."""
    runnable = ops.implementations("weighted_cross_entropy", torch.device("cpu"), torch.float32)
    assert ops.backend("weighted_cross_entropy", torch.device("cpu"), torch.float32) == (
        "extension" if "extension" in runnable else "composite")


def test_reference_loss_is_the_composite():
    """unet_fast.reference's loss (the oracle's) is the op's composite: float64 stays float64."""
    logits, target, weight = make_inputs((2, 3, 5, 7), torch.float64)
    assert_close(reference.weighted_cross_entropy(logits, target, weight), oracle(logits, target, weight, "mean")[0])
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        reference.weighted_cross_entropy(logits, target, weight, reduction="avg")


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype, target_dtype, with_weight", [(torch.float32, torch.int64, True),
                                                              (torch.bfloat16, torch.uint8, False),
                                                              (torch.float64, torch.int32, True)])
def test_opcheck(op, reduction, layout, dtype, target_dtype, with_weight):
    skip_unless_runnable(op, dtype)
    logits, target, weight = make_inputs((2, 3, 5, 7), dtype, layout=layout, ignore_index=None,
                                         target_dtype=target_dtype, with_weight=with_weight)
    torch.library.opcheck(getattr(torch.ops.unet_fast, OPS[op]).default,
                          (logits.requires_grad_(), target, weight, reduction, -100, True))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(implementation, reduction, layout):
    skip_unless_runnable(implementation, torch.float64)
    logits, target, weight = make_inputs((2, 3, 3, 2), torch.float64, layout=layout)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: weighted_softmax_cross_entropy(
        x, target, weight, reduction=reduction, implementation=implementation), (logits,))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_torch_compile_fullgraph(implementation):
    """Outputs and gradients of a compiled step equal the eager ones and the oracle's."""
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs((2, 3, 6, 7))

    def step(x, t, w):
        return (weighted_softmax_cross_entropy(x * 2, t, w, implementation=implementation)
                + weighted_softmax_cross_entropy(x, t, None, reduction="sum", implementation=implementation))

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    out = compiled(x1, target, weight)
    out.backward()
    expected = step(x2, target, weight)
    expected.backward()
    assert_close(out, expected, msg="loss")
    assert_close(x1.grad, x2.grad, msg="gradient")
    want = oracle(2 * logits, target, weight, "mean")[0] + oracle(logits, target, None, "sum")[0]
    assert_close(out.cpu(), want, dtype=torch.float32, msg="against the oracle")


# Bad input: each a clear error, from every implementation.
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int64])
def test_target_out_of_range_names_value_and_position(implementation, target_dtype):
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs((2, 3, 5, 7), target_dtype=target_dtype, ignore_index=None)
    target[1, 2, 4] = 3
    target[1, 3, 0] = 7
    with pytest.raises(IndexError, match=r"target has value 3 at \(n=1, h=2, w=4\).*\[0, 3\).*ignore_index=-100"):
        weighted_softmax_cross_entropy(logits, target, weight, implementation=implementation, value_check="now")
    if target_dtype == torch.int64:
        target[0, 0, 1] = -1
        with pytest.raises(IndexError, match=r"value -1 at \(n=0, h=0, w=1\)"):
            weighted_softmax_cross_entropy(logits, target, weight, implementation=implementation,
                                           value_check="now")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_bad_weight_names_value_and_position(implementation, bad):
    skip_unless_runnable(implementation)
    logits, target, weight = make_inputs((2, 3, 5, 7))
    weight[0, 4, 6] = bad
    with pytest.raises(ValueError, match=r"weight has value .* at \(n=0, h=4, w=6\); weights must be >= 0 and not NaN"):
        weighted_softmax_cross_entropy(logits, target, weight, implementation=implementation, value_check="now")


def test_bad_arguments():
    logits, target, weight = make_inputs((2, 3, 5, 7))
    with pytest.raises(ValueError, match=r"logits must be a 4-D tensor \(N, C, H, W\), got \(3, 5, 7\)"):
        weighted_softmax_cross_entropy(logits[0], target, weight)
    with pytest.raises(ValueError, match=r"target must have shape \(N, H, W\) = \(2, 5, 7\).*got \(2, 5, 6\)"):
        weighted_softmax_cross_entropy(logits, target[..., :6], weight)
    with pytest.raises(ValueError, match=r"weight must be None or have shape \(N, H, W\) = \(2, 5, 7\), got \(1, 5, 7\)"):
        weighted_softmax_cross_entropy(logits, target, weight[:1])
    with pytest.raises(TypeError, match="logits must be float32, bfloat16, float16 or float64, got torch.int64"):
        weighted_softmax_cross_entropy(logits.long(), target, weight)
    with pytest.raises(TypeError, match="target must hold class indices as uint8, int32 or int64, got torch.float32"):
        weighted_softmax_cross_entropy(logits, target.float(), weight)
    with pytest.raises(TypeError, match="weight must be a floating-point tensor, got torch.int64"):
        weighted_softmax_cross_entropy(logits, target, weight.long())
    with pytest.raises(ValueError, match=f"target is on meta but logits on {logits.device}"):
        weighted_softmax_cross_entropy(logits, target.to("meta"), weight)
    with pytest.raises(ValueError, match=f"weight is on meta but logits on {logits.device}"):
        weighted_softmax_cross_entropy(logits, target, weight.to("meta"))
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        weighted_softmax_cross_entropy(logits, target, weight, reduction="avg")
    with pytest.raises(TypeError, match="ignore_index must be an int, got float"):
        weighted_softmax_cross_entropy(logits, target, weight, ignore_index=-1.0)
    with pytest.raises(ValueError, match="implementation must be None or one of"):
        weighted_softmax_cross_entropy(logits, target, weight, implementation="fused")


# The loss module.
def test_module_crops_target_and_weight_to_the_logits():
    logits, _, _ = make_inputs((2, 3, 6, 7))
    _, big_target, big_weight = make_inputs((2, 3, 11, 12), seed=1)
    loss_fn = WeightedSoftmaxCrossEntropy(crop_to_logits=True)
    target, weight = big_target[:, 2:8, 2:9], big_weight[:, 2:8, 2:9]  # centre crop: offsets (11-6)//2, (12-7)//2
    assert_close(loss_fn(logits, big_target, big_weight), weighted_softmax_cross_entropy(logits, target, weight))
    assert_close(loss_fn(logits, big_target), weighted_softmax_cross_entropy(logits, target))
    with pytest.raises(ValueError, match="target must have shape"):
        WeightedSoftmaxCrossEntropy()(logits, big_target, big_weight)
    with pytest.raises(ValueError, match=r"target of size \(5, 7\) is smaller than the logits' \(6, 7\)"):
        loss_fn(logits, big_target[:, :5, :7])


def test_module_options_and_gradient():
    logits, target, weight = make_inputs((2, 3, 6, 7), ignore_index=1)
    loss_fn = WeightedSoftmaxCrossEntropy(reduction="sum", ignore_index=1)
    assert "reduction='sum'" in repr(loss_fn)
    check_against_oracle(logits, target, weight, "sum", ignore_index=1, loss_fn=loss_fn)
    with pytest.raises(ValueError, match="reduction must be"):
        WeightedSoftmaxCrossEntropy(reduction="avg")


# Triton: compilation for sm_90 and sm_80 without a GPU.
TRITON_COMPILE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, os.environ["TESTS_DIR"])
    import triton
    from triton.backends.compiler import GPUTarget
    from triton_static import _ast_source, ptxas_report
    from unet_fast.ops.triton.weighted_cross_entropy import BLOCK, NUM_WARPS, _weighted_cross_entropy_kernel as kernel
    scalars = dict(num_pixels="i64", HW="i64", C="i32", stride_n="i64", stride_c="i64", stride_p="i64",
                   ignore_index="i32")
    for logits, target, with_grad, per_pixel in (("bf16", "u8", True, False), ("fp32", "i64", True, True),
                                                 ("fp32", "i32", False, False)):
        pointers = dict(logits_ptr="*" + logits, target_ptr="*" + target, weight_ptr="*fp32", loss_ptr="*fp32",
                        grad_ptr="*" + logits, part_loss_ptr="*fp32", part_count_ptr="*i64", part_bad_ptr="*i64")
        constexprs = dict(HAS_WEIGHT=True, PER_PIXEL=per_pixel, WITH_GRAD=with_grad, FP64=False, BLOCK=BLOCK)
        signature = {**pointers, **scalars, **{k: "constexpr" for k in constexprs}}
        for capability in (90, 80):
            compiled = triton.compile(_ast_source(kernel, signature, constexprs, {}),
                                      target=GPUTarget("cuda", capability, 32), options={"num_warps": NUM_WARPS})
            registers, spills = ptxas_report(compiled.asm["ptx"], capability)
            print(json.dumps(dict(capability=capability, variant=[logits, target, with_grad, per_pixel],
                                  target_ok=f".target sm_{capability}" in compiled.asm["ptx"],
                                  cubin=len(compiled.asm["cubin"]), registers=registers, spills=spills)))
""")


def test_triton_kernel_compiles_for_gpu_without_one():
    """sm_90 and sm_80 from the CPU, in a process without TRITON_INTERPRET (interpreted kernels don't compile)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TESTS_DIR=os.path.dirname(__file__), TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run([sys.executable, "-c", TRITON_COMPILE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 6
    for r in rows:
        assert r["target_ok"] and r["cubin"] > 0 and r["spills"] == 0, r


@pytest.mark.parametrize("implementation", ["extension", "triton"])
def test_value_check_deferred_reports_at_the_next_call_or_check_pending(implementation):
    """value_check="deferred" (CUDA's default): the call that saw a bad target returns, the next call
    (or check_pending) raises naming the pixel; "off" never raises; "now" raises at once."""
    from unet_fast.ops import weighted_cross_entropy as module

    if implementation not in ops.implementations("weighted_cross_entropy", torch.device("cpu"), torch.float32):
        pytest.skip(f"{implementation} cannot run on the CPU here")
    logits = torch.randn(1, 2, 3, 4)
    good = torch.zeros(1, 3, 4, dtype=torch.int64)
    bad = good.clone()
    bad[0, 2, 1] = 7
    call = lambda target, **kw: weighted_softmax_cross_entropy(logits, target, implementation=implementation, **kw)
    call(bad, value_check="deferred")  # returns
    with pytest.raises(IndexError, match=r"value 7 at \(n=0, h=2, w=1\).*earlier call"):
        call(good)
    call(bad, value_check="deferred")
    with pytest.raises(IndexError, match="value 7"):
        module.check_pending()
    module.check_pending()  # nothing left
    call(bad, value_check="off")
    with pytest.raises(IndexError, match="value 7"):
        call(bad, value_check="now")
    with pytest.raises(ValueError, match="value_check must be one of"):
        call(good, value_check="later")
