"""CPU seconds of one forward of a 572 x 572 tile (1 thread, torch.inference_mode, CPU autocast) in fp32, bf16 and
fp16, for the paper's network (depth 5, base 64) and the default recipe's (depth 3, base 16), with whether oneDNN has
kernels for each precision on this CPU; and, with a trained model file, how many pixels of its labels of an image
differ between fp32 and bf16.

    python benchmarks/results/2026-11-27-cpu-precision.py [MODEL.safetensors IMAGE.tif]
"""
import sys
import time

import numpy as np
import torch

import unet_fast
from unet_fast.tiling import cpu_convolutions_use_onednn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def seconds(model, dtype, tile=572, repeats=2):
    x = torch.rand(1, model.in_channels, tile, tile).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(x)
        best = min(best, time.process_time() - start)
    return best


def main():
    torch.set_num_threads(1)
    print("oneDNN kernels:", {name: cpu_convolutions_use_onednn(dtype) for name, dtype in DTYPES.items()})
    for depth, base in ((5, 64), (3, 16)):
        model = unet_fast.UNet(1, 2, depth, base).eval().to(memory_format=torch.channels_last)
        times = {name: seconds(model, dtype) for name, dtype in DTYPES.items()}
        print(f"depth {depth} base {base}: " + ", ".join(f"{name} {t:.2f} s ({times['fp32'] / t:.2f}x fp32)"
                                                         for name, t in times.items()))
    if len(sys.argv) == 3:
        import tifffile
        from unet_fast.inference import predict_tiled

        model, image = unet_fast.load_model(sys.argv[1]), tifffile.imread(sys.argv[2])
        fp32, bf16 = (predict_tiled(model, image, dtype=d, progress=False) for d in ("fp32", "bf16"))
        print(f"labels differing between fp32 and bf16: {100 * np.mean(fp32 != bf16):.4f} % of the pixels")


if __name__ == "__main__":
    main()
