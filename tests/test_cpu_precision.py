"""A low precision the CPU has no oneDNN kernels for (fp16 on most CPUs, bf16 on AVX2-only ones) runs aten's
fallback convolutions, 8-11x slower than fp32 (benchmarks/results/2026-11-27-cpu-precision.md): predict_tiled says so,
naming the way out, and stays quiet where the kernels exist."""
import warnings

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import inference
from unet_fast.inference import predict_tiled


def _segment(dtype, kernels, monkeypatch):
    monkeypatch.setattr(inference, "cpu_convolutions_use_onednn", lambda d: d in kernels)
    torch.manual_seed(0)
    model = unet_fast.UNet(1, 2, depth=2, base_channels=4)
    image = np.random.default_rng(0).random((2, 45, 37), dtype=np.float32)[:, ::-1]   # a stack, odd, strided
    return predict_tiled(model, image, dtype=dtype, progress=False)


@pytest.mark.parametrize("dtype, kernels, advice", [
    ("fp16", {torch.float32, torch.bfloat16},
     r"use fp32 \(the default\), or bf16, which this CPU has oneDNN kernels"),
    ("fp16", {torch.float32}, r"use fp32 \(the default\)$"),
    ("bf16", {torch.float32}, r"use fp32 \(the default\)$"),
])
def test_a_precision_without_cpu_kernels_is_named_with_the_way_out(dtype, kernels, advice, monkeypatch):
    with pytest.warns(UserWarning, match=f"^{dtype} on this CPU: torch has no oneDNN kernels for it here.*{advice}"):
        labels = _segment(dtype, kernels, monkeypatch)
    assert labels.shape == (2, 45, 37)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_no_warning_where_the_cpu_has_the_kernels(dtype, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _segment(dtype, {torch.float32, torch.bfloat16, torch.float16}, monkeypatch)


@pytest.mark.parametrize("amp", [True, False])
def test_training_in_bf16_on_a_cpu_without_its_kernels_is_named_with_the_way_out(amp, monkeypatch, tmp_path):
    """Said before any work (a resume that cannot be read fails right after it: no training step is run here)."""
    from unet_fast.data import ArrayDataset
    from unet_fast.train import fit

    monkeypatch.setattr(inference, "cpu_convolutions_use_onednn", lambda d: d == torch.float32)
    label = np.zeros((33, 35), np.uint8)
    label[5:15, 8:20] = 1
    data = ArrayDataset([np.random.default_rng(0).random((33, 35), dtype=np.float32)] * 2, [label] * 2)
    train = lambda: fit(unet_fast.UNet(1, 2, depth=2, base_channels=4), data, epochs=1, tiles_per_epoch=2,
                        batch_size=2, tile_size=28, amp=amp, progress=False, resume=tmp_path / "none.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises((FileNotFoundError, ValueError), match="none.safetensors"):
            train()
    said = [str(w.message) for w in caught if "on this CPU" in str(w.message)]
    if amp:
        assert len(said) == 1 and said[0].startswith("bf16 on this CPU: torch has no oneDNN kernels for it here")
        assert said[0].endswith("train without bf16 autocast (amp=False, no --amp)")
    else:
        assert said == []
