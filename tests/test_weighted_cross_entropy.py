"""weighted_softmax_cross_entropy: every implementation on this machine against the composite oracle.

Oracle: unet_fast.reference.weighted_cross_entropy (computes in fp32); for float64 logits the
same composite in float64 (weighted_cross_entropy_composite), so float64 is checked to 1e-10.
The Triton kernel runs on the CPU under TRITON_INTERPRET=1 in a subprocess (the interpreter is
chosen when kernels are defined, so it cannot be switched on inside this process).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tolerances import TOLERANCES, assert_close, relative_error

from unet_fast import _extension, reference
from unet_fast.losses import WeightedSoftmaxCrossEntropy
from unet_fast.ops import weighted_cross_entropy as wce_module
from unet_fast.ops import weighted_softmax_cross_entropy

needs_extension = pytest.mark.skipif(not _extension.available(), reason="unet_fast._C not built")
REDUCTIONS = ["none", "mean", "sum"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def make_inputs(shape, dtype=torch.float32, scale=3.0, ignore_index=-100, with_weight=True, layout="contiguous",
                target_dtype=torch.int64, device="cpu", seed=0):
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


def oracle(logits, target, weight, reduction, ignore_index):
    """(loss, gradient of loss.sum() w.r.t. logits) from the composite."""
    x = logits.detach().clone().requires_grad_()
    if logits.dtype == torch.float64:
        loss = wce_module.weighted_cross_entropy_composite(x, target, weight, reduction, ignore_index)
    else:
        loss = reference.weighted_cross_entropy(x, target, weight, reduction=reduction, ignore_index=ignore_index)
    grad, = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def run(fn, logits, target, weight, reduction, ignore_index):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, target, weight, reduction=reduction, ignore_index=ignore_index)
    grad, = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def check_against_oracle(fn, logits, target, weight, reduction, ignore_index=-100):
    loss, grad = run(fn, logits, target, weight, reduction, ignore_index)
    ref_loss, ref_grad = oracle(logits, target, weight, reduction, ignore_index)
    expected_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    assert loss.dtype == expected_dtype and loss.shape == ref_loss.shape
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    # The loss is computed in fp32 from the same low-precision logits: fp32 tolerance for it.
    assert_close(loss, ref_loss, dtype=expected_dtype)
    if logits.dtype in (torch.float32, torch.float64):
        assert_close(grad, ref_grad)
    else:  # the gradient is rounded to the logits' dtype: judge it by its relative error
        assert relative_error(grad, ref_grad) <= TOLERANCES[logits.dtype][0]


def composite_only(monkeypatch):
    monkeypatch.setattr(wce_module._extension, "has_kernel", lambda op, device_type: False)


IMPLEMENTATIONS = [pytest.param("cpu-kernel", marks=needs_extension), "composite"]


def select(impl, monkeypatch):
    if impl == "composite":
        composite_only(monkeypatch)
    return weighted_softmax_cross_entropy


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("channels", [2, 3, 7])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_composite(impl, dtype, reduction, channels, layout, monkeypatch):
    fn = select(impl, monkeypatch)
    logits, target, weight = make_inputs((2, channels, 13, 17), dtype, layout=layout)
    check_against_oracle(fn, logits, target, weight, reduction)


@needs_extension
@pytest.mark.parametrize("shape", [(1, 2, 1, 1), (3, 2, 5, 3), (2, 32, 9, 11), (1, 3, 70, 70), (2, 2, 64, 129)])
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("ignore_index", [-100, 1, None])
def test_shapes_weights_and_ignore_index(shape, with_weight, ignore_index):
    # (2, 2, 64, 129) spans several 4096-pixel blocks and ends on a partial chunk.
    logits, target, weight = make_inputs(shape, ignore_index=ignore_index, with_weight=with_weight)
    for reduction in REDUCTIONS:
        check_against_oracle(weighted_softmax_cross_entropy, logits, target, weight, reduction,
                             -100 if ignore_index is None else ignore_index)


@needs_extension
@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_target_and_weight_dtypes(target_dtype, weight_dtype):
    logits, target, weight = make_inputs((2, 3, 11, 7), ignore_index=255, target_dtype=target_dtype)
    weight = weight.to(weight_dtype)
    check_against_oracle(weighted_softmax_cross_entropy, logits, target, weight, "mean", ignore_index=255)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_logits_are_stable(impl, dtype, monkeypatch):
    fn = select(impl, monkeypatch)
    logits, target, weight = make_inputs((2, 3, 8, 9), dtype, scale=1e4 if dtype == torch.float16 else 1e30)
    loss, grad = run(fn, logits, target, weight, "none", -100)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    check_against_oracle(fn, logits, target, weight, "none")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_every_pixel_ignored_gives_zero(impl, monkeypatch):
    fn = select(impl, monkeypatch)
    logits, target, weight = make_inputs((1, 2, 4, 5))
    target.fill_(-100)
    loss, grad = run(fn, logits, target, weight, "mean", -100)
    assert loss.item() == 0 and not grad.any()


@needs_extension
def test_no_gradient_requested_skips_it():
    logits, target, weight = make_inputs((2, 3, 6, 7))
    loss, grad, count = torch.ops.unet_fast.weighted_cross_entropy(logits, target, weight, 1, -100, False)
    assert grad.numel() == 0 and count.item() == (target != -100).sum().item()
    with torch.no_grad():
        assert_close(weighted_softmax_cross_entropy(logits.requires_grad_(), target, weight), loss)


@needs_extension
def test_deterministic_across_thread_counts():
    logits, target, weight = make_inputs((2, 2, 100, 123), scale=10)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(torch.ops.unet_fast.weighted_cross_entropy(logits, target, weight, 2, -100, True)[:2])
    finally:
        torch.set_num_threads(threads)
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])


def test_weight_that_needs_a_gradient_gets_it():
    logits, target, weight = make_inputs((2, 3, 5, 6))
    weight.requires_grad_()
    loss = weighted_softmax_cross_entropy(logits, target, weight, reduction="sum")
    grad, = torch.autograd.grad(loss, weight)
    expected = reference.weighted_cross_entropy(logits, target, None, reduction="none")
    assert_close(grad, expected)


@needs_extension
@pytest.mark.parametrize("reduction", [0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype, target_dtype, with_weight", [(torch.float32, torch.int64, True),
                                                              (torch.bfloat16, torch.uint8, False),
                                                              (torch.float64, torch.int32, True)])
def test_opcheck(reduction, layout, dtype, target_dtype, with_weight):
    logits, target, weight = make_inputs((2, 3, 5, 7), dtype, layout=layout, ignore_index=None,
                                         target_dtype=target_dtype, with_weight=with_weight)
    torch.library.opcheck(torch.ops.unet_fast.weighted_cross_entropy.default,
                          (logits.requires_grad_(), target, weight, reduction, -100, True))


@needs_extension
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(reduction, layout):
    logits, target, weight = make_inputs((2, 3, 3, 2), torch.float64, layout=layout)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: weighted_softmax_cross_entropy(x, target, weight, reduction=reduction), (logits,))


@needs_extension
@pytest.mark.slow
def test_torch_compile_fullgraph():
    logits, target, weight = make_inputs((2, 3, 6, 7))

    def step(x, t, w):
        return weighted_softmax_cross_entropy(x * 2, t, w) + weighted_softmax_cross_entropy(x, t, None, reduction="sum")

    compiled = torch.compile(step, fullgraph=True)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    out = compiled(x1, target, weight)
    out.backward()
    expected = step(x2, target, weight)
    expected.backward()
    assert_close(out, expected)
    assert_close(x1.grad, x2.grad)


# Bad input: each a clear error, on the kernel and the composite path alike.
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int64])
def test_target_out_of_range_names_value_and_position(impl, target_dtype, monkeypatch):
    fn = select(impl, monkeypatch)
    logits, target, weight = make_inputs((2, 3, 5, 7), target_dtype=target_dtype, ignore_index=None)
    target[1, 2, 4] = 3
    target[1, 3, 0] = 7
    with pytest.raises(IndexError, match=r"target has value 3 at \(n=1, h=2, w=4\).*\[0, 3\).*ignore_index=-100"):
        fn(logits, target, weight)
    if target_dtype == torch.int64:
        target[0, 0, 1] = -1
        with pytest.raises(IndexError, match=r"value -1 at \(n=0, h=0, w=1\)"):
            fn(logits, target, weight)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_bad_weight_names_value_and_position(impl, bad, monkeypatch):
    fn = select(impl, monkeypatch)
    logits, target, weight = make_inputs((2, 3, 5, 7))
    weight[0, 4, 6] = bad
    with pytest.raises(ValueError, match=r"weight has value .* at \(n=0, h=4, w=6\); weights must be >= 0 and not NaN"):
        fn(logits, target, weight)


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
    with pytest.raises(ValueError, match="target is on meta but logits on cpu"):
        weighted_softmax_cross_entropy(logits, target.to("meta"), weight)
    with pytest.raises(ValueError, match="weight is on meta but logits on cpu"):
        weighted_softmax_cross_entropy(logits, target, weight.to("meta"))
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        weighted_softmax_cross_entropy(logits, target, weight, reduction="avg")
    with pytest.raises(TypeError, match="ignore_index must be an int, got float"):
        weighted_softmax_cross_entropy(logits, target, weight, ignore_index=-1.0)


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
    check_against_oracle(lambda x, t, w, **kw: loss_fn(x, t, w), logits, target, weight, "sum", ignore_index=1)
    with pytest.raises(ValueError, match="reduction must be"):
        WeightedSoftmaxCrossEntropy(reduction="avg")


# Triton: numerics under the interpreter (CPU), compilation for sm_90 and sm_80 without a GPU.
TRITON_INTERPRETER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    sys.path.insert(0, os.environ["TESTS_DIR"])
    import triton_interpreter_fix  # Triton 3.5/3.6's interpreter under numpy >= 2.4
    from test_weighted_cross_entropy import make_inputs, oracle
    from tolerances import relative_error
    from unet_fast.ops.triton.weighted_cross_entropy import (weighted_cross_entropy_checked,
                                                              weighted_cross_entropy_triton)
    results = []
    for channels in (2, 3, 7, 32):
        for layout in ("contiguous", "channels_last", "strided"):
            for reduction, code in (("none", 0), ("mean", 1), ("sum", 2)):
                for with_weight in (True, False):
                    shape = (2, channels, 13, 17) if channels < 32 else (1, 32, 5, 9)
                    logits, target, weight = make_inputs(shape, layout=layout, target_dtype=torch.int32,
                                                         with_weight=with_weight, scale=30)
                    loss, grad, count, bad = weighted_cross_entropy_triton(logits, target, weight, code, -100, True)
                    ref_loss, ref_grad = oracle(logits, target, weight, reduction, -100)
                    scale = count if reduction == "mean" else 1
                    results.append(dict(case=[channels, layout, reduction, with_weight],
                                        loss=relative_error(loss, ref_loss), grad=relative_error(grad / scale, ref_grad),
                                        shape=list(loss.shape) == list(ref_loss.shape), bad=bad.tolist()))
    for dtype, target_dtype in ((torch.float64, torch.int64), (torch.float16, torch.uint8)):
        for reduction in ("none", "mean"):  # through the op's autograd registration, as the public function runs it
            logits, target, weight = make_inputs((2, 3, 9, 11), dtype, target_dtype=target_dtype, ignore_index=None)
            x = logits.clone().requires_grad_()
            loss = weighted_cross_entropy_checked(x, target, weight, {"none": 0, "mean": 1}[reduction], -100, True)
            grad, = torch.autograd.grad(loss.sum(), x)
            ref_loss, ref_grad = oracle(logits, target, weight, reduction, -100)
            results.append(dict(case=[str(dtype), reduction], loss=relative_error(loss, ref_loss),
                                grad=relative_error(grad, ref_grad), shape=grad.dtype == dtype, bad=[-1, -1]))
    logits, target, weight = make_inputs((2, 3, 5, 7), target_dtype=torch.uint8, ignore_index=255)
    target[1, 2, 4] = 9
    weight[0, 3, 1] = float("nan")
    bad = weighted_cross_entropy_triton(logits, target, weight, 1, 255, False)[3].tolist()
    try:
        weighted_cross_entropy_checked(logits, target, weight, 1, 255, False)
        message = None
    except IndexError as error:
        message = str(error)
    results.append(dict(case="bad", bad=bad, message=message))
    print(json.dumps(results))
""")


@pytest.mark.slow
def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TESTS_DIR": os.path.dirname(__file__)}
    done = subprocess.run([sys.executable, "-c", TRITON_INTERPRETER_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    *cases, bad_case = results
    for r in cases:
        assert r["shape"] and r["bad"] == [-1, -1], r
        tolerance = TOLERANCES[torch.float16][0] if "float16" in str(r["case"]) else 1e-5
        assert r["loss"] <= 1e-5 and r["grad"] <= tolerance, r
    assert bad_case["bad"] == [35 + 2 * 7 + 4, 3 * 7 + 1]  # flat (n, h, w) of the bad target and weight
    assert "target has value 9 at (n=1, h=2, w=4)" in bad_case["message"]


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


# On a GPU: every CUDA implementation against the oracle, opcheck and compile.
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda-kernel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("channels", [2, 3, 7, 32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_cuda_matches_composite(impl, dtype, reduction, channels, layout, monkeypatch):
    if impl == "cuda-kernel":
        if not _extension.has_kernel("weighted_cross_entropy", "cuda"):
            pytest.skip("CUDA kernel not built")
        monkeypatch.setattr(wce_module, "_TRITON", None)
    logits, target, weight = make_inputs((2, channels, 33, 65), dtype, layout=layout, device="cuda")
    check_against_oracle(weighted_softmax_cross_entropy, logits, target, weight, reduction)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "cuda-kernel"])
def test_cuda_bad_values_raise(impl, monkeypatch):
    if impl == "cuda-kernel":
        if not _extension.has_kernel("weighted_cross_entropy", "cuda"):
            pytest.skip("CUDA kernel not built")
        monkeypatch.setattr(wce_module, "_TRITON", None)
    logits, target, weight = make_inputs((2, 3, 5, 7), device="cuda", ignore_index=None)
    target[1, 2, 4] = 3
    with pytest.raises(IndexError, match=r"target has value 3 at \(n=1, h=2, w=4\)"):
        weighted_softmax_cross_entropy(logits, target, weight)
    target[1, 2, 4] = 0
    weight[0, 4, 6] = -1
    with pytest.raises(ValueError, match=r"weight has value -1.0* at \(n=0, h=4, w=6\)"):
        weighted_softmax_cross_entropy(logits, target, weight)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_opcheck_and_compile(layout):
    logits, target, weight = make_inputs((2, 3, 17, 19), layout=layout, device="cuda", ignore_index=None)
    logits.requires_grad_()
    ops = [torch.ops.unet_fast.weighted_cross_entropy_triton.default]
    if _extension.has_kernel("weighted_cross_entropy", "cuda"):
        ops.append(torch.ops.unet_fast.weighted_cross_entropy.default)
    for op in ops:
        for reduction in (0, 1, 2):
            torch.library.opcheck(op, (logits, target, weight, reduction, -100, True))
    compiled = torch.compile(lambda x, t, w: weighted_softmax_cross_entropy(x, t, w), fullgraph=True)
    out = compiled(logits, target, weight)
    grad, = torch.autograd.grad(out, logits)
    ref_loss, ref_grad = oracle(logits, target, weight, "mean", -100)
    assert_close(out, ref_loss)
    assert_close(grad, ref_grad)
