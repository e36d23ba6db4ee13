"""crop_concat at the decoder's top level (skip 64 x 568^2 cropped to 392^2, plus 64 x 392^2):
our compiled kernel vs aten's cat of the cropped view, side by side. This decides the dispatch:
on the CPU aten's cat won, so unet_fast.ops.crop_concat uses it there."""
import pytest
import torch

from unet_fast import _extension
from unet_fast.ops.crop_concat import crop_concat_reference

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.mark.parametrize("impl", ["kernel", "aten_composite"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_crop_concat_top_level(timed, benchmark, impl, fmt, dtype, device):
    if impl == "kernel" and not _extension.has_kernel("crop_concat", device):
        pytest.skip(f"unet_fast._C has no {device} crop_concat kernel")
    skip = torch.randn(1, 64, 568, 568, device=device).to(dtype).contiguous(memory_format=FORMATS[fmt])
    x = torch.randn(1, 64, 392, 392, device=device).to(dtype).contiguous(memory_format=FORMATS[fmt])
    fn = torch.ops.unet_fast.crop_concat if impl == "kernel" else crop_concat_reference
    moved = 2 * (x.numel() * 2) * x.element_size()  # read both windows, write the concatenation
    benchmark.group = f"crop_concat top level {device} {fmt} {dtype}"
    benchmark.extra_info.update(gbytes=moved / 1e9)
    with torch.inference_mode():
        timed(fn, skip, x, device=device, rounds=15)
