"""The torch allocator's peak during UNet's CPU forward (backend "torch"), as it is now (each tensor let go once
read) and as it was before 2026-11-27 (every skip and each double conv's input kept to the end), against the walk
tiling._cpu_forward_bytes makes of the current forward; torch.profiler's memory events, one process.

    python benchmarks/results/2026-11-27-cpu-forward-memory.py [TILE] [fp32|bf16|fp16]    # default 572 fp32
"""
import sys

import torch
import torch.nn.functional as F
from torch import profiler

import unet_fast
from unet_fast import tiling
from unet_fast.ops import crop_concat


def forward_keeping_everything(self, x):
    """UNet._forward_torch before 2026-11-27."""
    skips = []
    for level, block in enumerate(self.encoder):
        x = F.relu_(block.conv2(F.relu_(block.conv1(x))))
        if level < self.depth - 1:
            skips.append(x)
            x = F.max_pool2d(x, 2)
    x = self.dropout(x)
    for block, skip in zip(self.decoder, reversed(skips)):
        x = crop_concat(skip, block.upconv(x))
        x = F.relu_(block.conv2(F.relu_(block.conv1(x))))
    return self.head(x)


def allocator_peak(model, x, dtype, forward=None):
    autocast = lambda: torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    run = (lambda: forward(model, x)) if forward else (lambda: model(x))
    with torch.inference_mode(), autocast():
        run()   # one-time allocations out of the way
    with torch.inference_mode(), autocast(), profiler.profile(activities=[profiler.ProfilerActivity.CPU],
                                                              profile_memory=True) as prof:
        run()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def main():
    tile = int(sys.argv[1]) if len(sys.argv) > 1 else 572
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        sys.argv[2] if len(sys.argv) > 2 else "fp32"]
    torch.manual_seed(0)
    model = unet_fast.UNet(1, 2).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 1, tile, tile).contiguous(memory_format=torch.channels_last)
    walk = tiling._cpu_forward_bytes(5, "valid", 1, 2, 64, tile, tile, 1, dtype.itemsize,
                                     tiling.cpu_convolutions_use_onednn(dtype))
    MiB = 2 ** 20
    print(f"depth 5, base 64, tile {tile}, {dtype}: allocator peak now {allocator_peak(model, x, dtype) / MiB:.1f} "
          f"MiB (walk {walk / MiB:.1f}), before {allocator_peak(model, x, dtype, forward_keeping_everything) / MiB:.1f}"
          f" MiB")


if __name__ == "__main__":
    main()
