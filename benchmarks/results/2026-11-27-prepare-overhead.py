"""What predict_tiled spends per call making the model ready (device, channels_last, eval), before and after 07e4f37.

Run: python benchmarks/results/2026-11-27-prepare-overhead.py (CPU; the model is the default U-Net of depth 5,
base 64: the walk over its modules is what is timed, not its weights' size).
"""
import time

import torch

import unet_fast
from unet_fast import inference


def before(model, device):      # what predict_tiled did before 07e4f37, and model.train(was_training) after
    model.to(device=device, memory_format=torch.channels_last).eval()
    model.train(False)


def after(model, device):
    inference._ready_for_inference(model, device)


model = unet_fast.UNet().eval()
device = torch.device("cpu")
for name, prepare in (("before", before), ("after", after)) * 2:
    prepare(model, device)
    start = time.perf_counter()
    for _ in range(500):
        prepare(model, device)
    print(f"{name}: {(time.perf_counter() - start) / 500 * 1e3:.3f} ms a call")
