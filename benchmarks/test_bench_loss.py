"""Weighted softmax cross-entropy, forward + backward: each implementation vs the eager composite.

Composite (the baseline): unet_fast.reference.weighted_cross_entropy, i.e. F.cross_entropy(logits,
target, reduction="none") * weight, "mean" over non-ignored pixels, backward, with an int64 target (what
F.cross_entropy needs). Candidates: unet_fast.ops.weighted_softmax_cross_entropy with implementation=
"extension" (the CPU C++ kernel with int64 and uint8 targets; on CUDA the CUDA C++ kernel) and, on CUDA,
"triton".
gbytes counts the bytes that must move: read logits, target and weight once, write the gradient once.

A second group compares the two ways to get the gradient on the CPU (the choice documented in
unet_fast/ops/weighted_cross_entropy.py): the forward kernel writes it and backward scales it
(saved) vs a forward kernel without it plus a second kernel pass that writes it (recompute).
"""
import pytest
import torch

from unet_fast import _extension, reference
from unet_fast.ops import weighted_softmax_cross_entropy

SHAPES = [(8, 2, 512, 512), (1, 2, 388, 388)]


def _inputs(shape, device, target_dtype=torch.int64):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g).to(device).requires_grad_()
    target = torch.randint(0, c, (n, h, w), generator=g).to(device=device, dtype=target_dtype)
    weight = (torch.rand(n, h, w, generator=g) * 5).to(device)
    return logits, target, weight


def _gbytes(logits, target, weight):
    return round((2 * logits.numel() * logits.element_size() + target.numel() * target.element_size()
                  + weight.numel() * weight.element_size()) / 1e9, 4)


CPU_IMPLS = [
    pytest.param("composite", torch.int64, id="composite"),
    pytest.param("cpu-kernel", torch.int64, id="cpu-kernel-int64-target",
                 marks=pytest.mark.skipif(not _extension.has_kernel("weighted_cross_entropy", "cpu"),
                                          reason="CPU kernel not built")),
    pytest.param("cpu-kernel", torch.uint8, id="cpu-kernel-uint8-target",
                 marks=pytest.mark.skipif(not _extension.has_kernel("weighted_cross_entropy", "cpu"),
                                          reason="CPU kernel not built")),
]
GPU_IMPLS = [
    pytest.param("composite", torch.int64, id="composite", marks=pytest.mark.gpu),
    pytest.param("triton", torch.uint8, id="triton-uint8-target", marks=pytest.mark.gpu),
    pytest.param("cuda-kernel", torch.uint8, id="cuda-kernel-uint8-target", marks=pytest.mark.gpu),
]


IMPLEMENTATIONS = {"cpu-kernel": "extension", "cuda-kernel": "extension", "triton": "triton"}


def _forward_backward(timed, benchmark, impl, target_dtype, shape, device, rounds):
    if impl == "cuda-kernel" and not _extension.has_kernel("weighted_cross_entropy", "cuda"):
        pytest.skip("CUDA kernel not built")
    logits, target, weight = _inputs(shape, device, target_dtype)
    if impl == "composite":
        loss_fn = reference.weighted_cross_entropy
    else:
        def loss_fn(logits, target, weight):
            return weighted_softmax_cross_entropy(logits, target, weight, implementation=IMPLEMENTATIONS[impl])

    def step():
        loss_fn(logits, target, weight).backward()
        logits.grad = None

    benchmark.group = f"loss fwd+bwd {device} {tuple(shape)} fp32"
    benchmark.extra_info.update(gbytes=_gbytes(logits, target, weight))
    timed(step, device=device, rounds=rounds, warmup_rounds=2)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl, target_dtype", CPU_IMPLS)
def test_loss_cpu(timed, benchmark, impl, target_dtype, shape):
    _forward_backward(timed, benchmark, impl, target_dtype, shape, "cpu", 15)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl, target_dtype", GPU_IMPLS)
def test_loss_cuda(timed, benchmark, impl, target_dtype, shape):
    _forward_backward(timed, benchmark, impl, target_dtype, shape, "cuda", 100)


@pytest.mark.skipif(not _extension.has_kernel("weighted_cross_entropy", "cpu"), reason="CPU kernel not built")
@pytest.mark.parametrize("strategy", ["saved", "recompute_baseline"])
def test_gradient_strategy_cpu(timed, benchmark, strategy):
    logits, target, weight = _inputs(SHAPES[0], "cpu", torch.uint8)
    x = logits.detach()
    op = torch.ops.unet_fast.weighted_cross_entropy

    def saved():  # forward kernel writes the gradient; backward multiplies it by grad_output / count
        loss, grad, count, _ = op(x, target, weight, 1, -100, True)
        return grad * (torch.ones(()) / count)

    def recompute():  # forward kernel without the gradient; a second pass writes it
        op(x, target, weight, 1, -100, False)
        return op(x, target, weight, 1, -100, True)[1]

    benchmark.group = f"loss gradient strategy cpu {SHAPES[0]} fp32"
    benchmark.extra_info.update(gbytes=_gbytes(logits, target, weight))
    timed(saved if strategy == "saved" else recompute, rounds=15, warmup_rounds=2)
