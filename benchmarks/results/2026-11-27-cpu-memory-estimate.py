"""CPU memory of a tile batch: the peak resident memory a forward pass (and predict_tiled) adds, measured, against
unet_fast.tiling's estimates, before (the GPU walk the CPU used) and after (its CPU walk).

Each case runs in a fresh process (``--case JSON``): imports, model, input (and a warm-up forward of the smallest
tile for "warm" cases), then the kernel's peak-RSS counter is reset (/proc/self/clear_refs "5"; without it,
resource.getrusage's ru_maxrss, valid only where nothing before the work went higher), then the baseline (current
RSS, /proc/self/statm), the work, and the peak (VmHWM). Reported: peak - baseline, less, for predict_tiled, the
result array it returns (image-sized: the caller's, not a batch's).

    python benchmarks/results/2026-11-27-cpu-memory-estimate.py            # every case, a markdown table
    python benchmarks/results/2026-11-27-cpu-memory-estimate.py --quick    # a few
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

MiB = 2 ** 20


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(case: dict) -> dict:
    import numpy as np
    import torch
    import unet_fast
    from unet_fast import tiling
    from unet_fast.inference import plan_tiles, predict_tiled

    torch.manual_seed(0)
    depth, padding, base = case["depth"], case["padding"], case["base"]
    cin, k = case["in_channels"], case["num_classes"]
    model = unet_fast.UNet(cin, k, depth, base, padding)
    model.eval().to(memory_format=torch.channels_last)
    tile, batch, batches = case["tile"], case["batch"], case.get("batches", 1)
    stride = tiling.kept_output(tile, depth, padding)[0]
    dtype = tiling.parse_compute_dtype(case["dtype"])
    element = dtype.itemsize
    onednn = tiling.cpu_convolutions_use_onednn(dtype)
    rng = np.random.default_rng(0)

    def forward(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return model(x).shape

    if case["warm"]:
        smallest = tiling._smallest_tile_covering(1, depth, padding)
        forward(torch.zeros(1, cin, smallest, smallest).contiguous(memory_format=torch.channels_last))
    result_bytes = 0
    if case["mode"] == "predict":
        # a stack of batch * batches planes, each exactly one tile's kept output: batches of ``batch`` tiles
        shape = (batch * batches,) + ((cin,) if cin > 1 else ()) + (stride, stride)
        image = rng.random(shape, dtype=np.float32)
        layout = "ZCYX" if cin > 1 else "ZYX"
        plan = plan_tiles(model, shape[-2:], slices=batch * batches, tile_size=tile, batch_size=batch,
                          device="cpu", dtype=case["dtype"])
        estimate = plan.estimated_bytes
        # labels uint8; probabilities float16 under bf16/fp16, else float32
        result_bytes = batch * batches * stride * stride * (1 if case["output"] == "labels" else element * k)
        work = lambda: predict_tiled(model, image, tile_size=tile, batch_size=batch, layout=layout,
                                     dtype=case["dtype"], output=case["output"], progress=False,
                                     memory_budget_bytes=2 ** 40)
    else:
        x = torch.from_numpy(rng.random((batch, cin, tile, tile), dtype=np.float32))
        x = x.contiguous(memory_format=torch.channels_last)
        estimate = tiling.estimate_activation_bytes(depth, padding, cin, k, base, tile, tile, batch, element, "cpu",
                                                    onednn)
        work = lambda: forward(x)
    before = tiling.estimate_activation_bytes(depth, padding, cin, k, base, tile, tile, batch, element, "cuda")
    reset = reset_peak()
    before_peak, baseline = peak_rss(), current_rss()
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    peak = peak_rss()
    return {**case, "measured": peak - baseline - result_bytes, "estimate": estimate, "old_estimate": before,
            "onednn": onednn, "seconds": seconds,
            "valid": (reset or before_peak < baseline + MiB) and peak > before_peak}


CASES = [
    # depth, base, padding, in_channels, num_classes, tile, batch
    (3, 16, "valid", 1, 2, 252, 1), (3, 16, "valid", 1, 2, 1004, 1), (3, 32, "same", 3, 3, 256, 2),
    (4, 16, "valid", 1, 2, 508, 1), (4, 32, "valid", 1, 2, 284, 2), (4, 32, "same", 3, 3, 512, 1),
    (5, 16, "valid", 1, 2, 572, 1), (5, 16, "valid", 1, 2, 1084, 1), (5, 32, "valid", 3, 3, 572, 1),
    (5, 64, "valid", 1, 2, 572, 1), (5, 64, "same", 1, 2, 512, 1), (5, 32, "same", 1, 3, 384, 4),
    (5, 64, "valid", 1, 2, 380, 2), (5, 64, "valid", 1, 2, 860, 1),
]
QUICK = [(3, 16, "valid", 1, 2, 252, 1), (4, 32, "same", 3, 3, 256, 2), (5, 64, "valid", 1, 2, 380, 1)]


# fp16 on a CPU without oneDNN fp16 kernels (this one): aten's im2col convolutions, column buffers 9x their inputs
FP16 = {(3, 16, "valid", 1, 2, 252, 1), (3, 32, "same", 3, 3, 256, 2), (4, 32, "valid", 1, 2, 284, 2),
        (5, 16, "valid", 1, 2, 572, 1), (5, 64, "valid", 1, 2, 380, 2)}


def cases(quick: bool):
    for depth, base, padding, cin, k, tile, batch in (QUICK if quick else CASES):
        config = dict(depth=depth, base=base, padding=padding, in_channels=cin, num_classes=k, tile=tile, batch=batch)
        for dtype in ("fp32", "bf16"):
            yield dict(config, mode="forward", dtype=dtype, warm=False)
            yield dict(config, mode="forward", dtype=dtype, warm=True)
        yield dict(config, mode="predict", dtype="fp32", output="labels", batches=1, warm=False)
        yield dict(config, mode="predict", dtype="bf16", output="probabilities", batches=3, warm=False)
        if (depth, base, padding, cin, k, tile, batch) in FP16:
            yield dict(config, mode="forward", dtype="fp16", warm=False)
            yield dict(config, mode="predict", dtype="fp16", output="probabilities", batches=3, warm=False)


def machine() -> str:
    import torch
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    simd = " ".join(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model} ({simd}), "
            f"torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--raw", help="also append each case's JSON to this file")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    print(f"Machine: {machine()}\n")
    print("| depth | base | padding | C in | K | tile | batch | dtype | what | measured MiB | old estimate MiB "
          "| measured / old | new estimate MiB | measured / new |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = {}
    for case in cases(args.quick):
        done = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
        if done.returncode:
            print(f"| {case} failed: {done.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if args.raw:
            with open(args.raw, "a") as raw:
                raw.write(json.dumps(r) + "\n")
        if r["mode"] == "forward":
            what = f"forward, {'warm' if r['warm'] else 'cold'}"
        else:
            what = f"predict_tiled {r['output']}, {r['batches']} batch(es), cold"
        old, new = r["measured"] / r["old_estimate"], r["measured"] / r["estimate"]
        ratios.setdefault(what.split(",")[0] + (" warm" if r["warm"] else " cold"), []).append((old, new))
        print(f"| {r['depth']} | {r['base']} | {r['padding']} | {r['in_channels']} | {r['num_classes']} | {r['tile']} "
              f"| {r['batch']} | {r['dtype']} | {what} | {r['measured'] / MiB:.1f} | {r['old_estimate'] / MiB:.1f} "
              f"| {old:.2f} | {r['estimate'] / MiB:.1f} | {new:.2f}"
              f"{'' if r['valid'] else ' (invalid: peak before the work)'} |", flush=True)
    print()
    for what, pairs in ratios.items():
        olds, news = [p[0] for p in pairs], [p[1] for p in pairs]
        print(f"- {what}: measured / old estimate {min(olds):.2f}-{max(olds):.2f}, "
              f"measured / new estimate {min(news):.2f}-{max(news):.2f} ({len(pairs)} runs)")


if __name__ == "__main__":
    main()
