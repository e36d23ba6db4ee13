"""Whole-network forward: unet_fast.UNet vs the reference, same weights, same input, one run.

CPU: 572x572 tile (the paper's), depth 5, base 64; fp32 and bf16 (autocast) channels_last.
CUDA (when present): the same at batch 8 in bf16 channels_last.
"""
import pytest
import torch

from network_flops import forward_gflop
from unet_fast import UNet, reference

GFLOP_PER_TILE = forward_gflop(572)  # forward, depth 5, base 64


def _pair(device, memory_format):
    torch.manual_seed(0)
    ref = reference.UNet().to(device).eval()
    fast = UNet().to(device).eval()
    fast.load_state_dict(ref.state_dict())
    return ref.to(memory_format=memory_format), fast.to(memory_format=memory_format)


CASES = [
    pytest.param("cpu", 1, None, torch.contiguous_format, id="cpu-fp32"),
    pytest.param("cpu", 1, torch.bfloat16, torch.channels_last, id="cpu-bf16-channels_last"),
    pytest.param("cuda", 8, torch.bfloat16, torch.channels_last, id="cuda-bf16-channels_last", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("impl", ["reference", "unet_fast"])
@pytest.mark.parametrize("device, batch, dtype, memory_format", CASES)
def test_forward_572(timed, benchmark, impl, device, batch, dtype, memory_format):
    ref, fast = _pair(device, memory_format)
    model = ref if impl == "reference" else fast
    x = torch.randn(batch, 1, 572, 572, device=device).contiguous(memory_format=memory_format)

    def forward():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            return model(x)

    benchmark.group = f"forward 572x572 {device} batch {batch} {dtype or 'fp32'} {memory_format}"
    benchmark.extra_info.update(gflop=GFLOP_PER_TILE * batch, tiles=batch)
    timed(forward, device=device, rounds=3 if device == "cpu" else 20)
