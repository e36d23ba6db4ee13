"""A small forward and backward through every Triton op, for compute-sanitizer memcheck.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py
    TRITON_INTERPRET=1 python benchmarks/gpu_sanitize.py cpu     # gpu.sh --dry-run: the same calls, no GPU

Without PyTorch's caching allocator every tensor is its own allocation, so an access past a
tensor's end is reported instead of landing in a neighbour. Shapes are odd (partial tiles,
partial pooling windows, crop offsets > 0, channel counts off the tile sizes) so that the masks
are what keeps accesses inside; every dtype the kernels ship for runs once, every kernel option too.
"""
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
import triton_interpreter_fix  # noqa: E402,F401  (cpu: Triton 3.5/3.6's interpreter under numpy >= 2.4)
from unet_fast import UNet  # noqa: E402
from unet_fast.ops import conv3x3_relu  # noqa: E402
from unet_fast.ops.crop_concat import crop_concat_reference  # noqa: E402


def main(device: str = "cuda") -> None:
    device = torch.device(device)
    torch.manual_seed(0)
    # the interpreter's bf16 arithmetic is wrong (tests/conftest.py): fp32 only there
    dtypes = (torch.bfloat16, torch.float16, torch.float32) if device.type == "cuda" else (torch.float32,)
    for dtype in dtypes:
        def randn(*shape):
            return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

        x, skip, weight, bias = randn(2, 5, 13, 11), randn(2, 3, 17, 16), randn(19, 8, 3, 3), randn(19)
        x3, weight3 = randn(2, 3, 13, 11), randn(19, 3, 3, 3)
        for padding in (0, 1):
            out = conv3x3_relu(x, weight, bias, skip=skip, padding=padding)
            out.backward(torch.randn_like(out))
            y, pooled = conv3x3_relu(x, weight, bias, skip=skip, padding=padding, pool=True)
            torch.autograd.backward((y, pooled), (torch.randn_like(y), torch.randn_like(pooled)))
            out = conv3x3_relu(x3, weight3, bias, padding=padding, direct=True)
            out.backward(torch.randn_like(out))
        cat = torch.ops.unet_fast.crop_concat_triton(skip, x)
        assert torch.equal(cat, crop_concat_reference(skip, x))
        cat.backward(torch.randn_like(cat))

    # the interpreter is slow: there, the smallest network with a skip, a pool and an up-convolution
    depth, base, shape = (3, 8, (2, 1, 60, 44)) if device.type == "cuda" else (2, 4, (1, 1, 20, 20))
    image = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last)
    for switches in ({}, dict(pool_epilogue=True, direct_first_layer=True)):
        model = UNet(in_channels=1, num_classes=2, depth=depth, base_channels=base, backend="triton",
                     **switches).to(device)
        model(image).sum().backward()
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(image).float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    print("gpu_sanitize: forward and backward ran")


if __name__ == "__main__":
    main(*sys.argv[1:])
