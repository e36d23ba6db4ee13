"""Weighted softmax cross-entropy, forward + backward: each implementation vs the eager composite.

Composite (the baseline): F.cross_entropy(logits, target, reduction="none") * weight, mean, backward,
with an int64 target (what F.cross_entropy needs). Candidates: unet_fast.ops.weighted_softmax_cross_entropy
on the CPU C++ kernel (int64 and uint8 targets), and on CUDA the Triton and CUDA C++ kernels.
gbytes counts the bytes that must move: read logits, target and weight once, write the gradient once.

A second group compares the two ways to get the gradient on the CPU (the choice documented in
unet_fast/ops/weighted_cross_entropy.py): the forward kernel writes it and backward scales it
(saved) vs a forward kernel without it plus a second kernel pass that writes it (recompute).
"""
import pytest
import torch
import torch.nn.functional as F

from unet_fast import _extension
from unet_fast.ops import weighted_cross_entropy as wce_module
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


def _composite(logits, target, weight):
    return (F.cross_entropy(logits, target, reduction="none") * weight).mean()


def _fused(logits, target, weight):
    return weighted_softmax_cross_entropy(logits, target, weight)


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


def _forward_backward(timed, benchmark, impl, target_dtype, shape, device, rounds, monkeypatch):
    if impl == "cuda-kernel":
        if not _extension.has_kernel("weighted_cross_entropy", "cuda"):
            pytest.skip("CUDA kernel not built")
        monkeypatch.setattr(wce_module, "_TRITON", None)
    logits, target, weight = _inputs(shape, device, target_dtype)
    loss_fn = _composite if impl == "composite" else _fused

    def step():
        loss_fn(logits, target, weight).backward()
        logits.grad = None

    benchmark.group = f"loss fwd+bwd {device} {tuple(shape)} fp32"
    benchmark.extra_info.update(gbytes=_gbytes(logits, target, weight))
    timed(step, device=device, rounds=rounds, warmup_rounds=2)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl, target_dtype", CPU_IMPLS)
def test_loss_cpu(timed, benchmark, impl, target_dtype, shape, monkeypatch):
    _forward_backward(timed, benchmark, impl, target_dtype, shape, "cpu", 15, monkeypatch)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl, target_dtype", GPU_IMPLS)
def test_loss_cuda(timed, benchmark, impl, target_dtype, shape, monkeypatch):
    _forward_backward(timed, benchmark, impl, target_dtype, shape, "cuda", 100, monkeypatch)


@pytest.mark.skipif(not _extension.has_kernel("weighted_cross_entropy", "cpu"), reason="CPU kernel not built")
@pytest.mark.parametrize("strategy", ["saved", "recompute_baseline"])
def test_gradient_strategy_cpu(timed, benchmark, strategy):
    logits, target, weight = _inputs(SHAPES[0], "cpu", torch.uint8)
    x = logits.detach()
    op = torch.ops.unet_fast.weighted_cross_entropy

    def saved():  # forward kernel writes the gradient; backward multiplies it by grad_output / count
        loss, grad, count = op(x, target, weight, 1, -100, True)
        return grad * (torch.ones(()) / count)

    def recompute():  # forward kernel without the gradient; a second pass writes it
        op(x, target, weight, 1, -100, False)
        return op(x, target, weight, 1, -100, True)[1]

    benchmark.group = f"loss gradient strategy cpu {SHAPES[0]} fp32"
    benchmark.extra_info.update(gbytes=_gbytes(logits, target, weight))
    timed(saved if strategy == "saved" else recompute, rounds=15, warmup_rounds=2)
