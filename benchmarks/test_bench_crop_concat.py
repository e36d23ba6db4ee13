"""crop_concat at the decoder's top level (skip 64 x 568^2 cropped to 392^2, plus 64 x 392^2), on CUDA:
the CUDA C++ kernel and the Triton kernel vs aten's cat of the cropped view, side by side. (On the CPU
aten's cat is the implementation: a C++ CPU kernel was no faster and was removed,
benchmarks/results/2026-11-26-cpu-crop_concat.md.)"""
import pytest
import torch

from unet_fast import ops
from unet_fast.ops import crop_concat
from unet_fast.ops.crop_concat import crop_concat_reference

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("impl", ["extension", "triton", "aten_composite"])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_crop_concat_top_level(timed, benchmark, impl, fmt, dtype):
    if impl != "aten_composite" and impl not in ops.implementations("crop_concat", torch.device("cuda"), dtype):
        pytest.skip(f"no {impl} crop_concat kernel here")
    skip = torch.randn(1, 64, 568, 568, device="cuda").to(dtype).contiguous(memory_format=FORMATS[fmt])
    x = torch.randn(1, 64, 392, 392, device="cuda").to(dtype).contiguous(memory_format=FORMATS[fmt])
    if impl == "aten_composite":
        fn = crop_concat_reference
    else:
        def fn(skip, x):
            return crop_concat(skip, x, implementation=impl)
    moved = 2 * (x.numel() * 2) * x.element_size()  # read both windows, write the concatenation
    benchmark.group = f"crop_concat top level cuda {fmt} {dtype}"
    benchmark.extra_info.update(gbytes=moved / 1e9)
    with torch.inference_mode():
        timed(fn, skip, x, device="cuda", rounds=15)
