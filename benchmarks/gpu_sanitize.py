"""A small forward and backward through every Triton op, for compute-sanitizer memcheck.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py

Without PyTorch's caching allocator every tensor is its own allocation, so an access past a
tensor's end is reported instead of landing in a neighbour. Shapes are odd (partial tiles,
crop offsets > 0, channel counts off the tile sizes) so that the masks are what keeps accesses
inside; every dtype the kernels ship for runs once.
"""
import torch

from unet_fast import UNet
from unet_fast.ops import conv3x3_relu
from unet_fast.ops.crop_concat import crop_concat_reference


def main() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        x = torch.randn(2, 5, 13, 11, device=device, dtype=dtype, requires_grad=True)
        skip = torch.randn(2, 3, 17, 16, device=device, dtype=dtype, requires_grad=True)
        weight = torch.randn(19, 8, 3, 3, device=device, dtype=dtype, requires_grad=True)
        bias = torch.randn(19, device=device, dtype=dtype, requires_grad=True)
        for padding in (0, 1):
            out = conv3x3_relu(x, weight, bias, skip=skip, padding=padding)
            out.backward(torch.randn_like(out))
        cat = torch.ops.unet_fast.crop_concat_triton(skip, x)
        assert torch.equal(cat, crop_concat_reference(skip, x))
        cat.backward(torch.randn_like(cat))

    model = UNet(in_channels=1, num_classes=2, depth=3, base_channels=8, backend="triton").to(device)
    image = torch.randn(2, 1, 60, 44, device=device).contiguous(memory_format=torch.channels_last)
    model(image).sum().backward()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(image).float().sum().backward()
    torch.cuda.synchronize()
    print("gpu_sanitize: forward and backward ran")


if __name__ == "__main__":
    main()
