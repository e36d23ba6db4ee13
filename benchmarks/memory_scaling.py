"""Peak memory and time of segmenting a huge uint8 TIFF with the output streamed to disk.

    python benchmarks/memory_scaling.py [--sizes 4096 8192 16384] [--workdir DIR] [--dtype bf16]

Each size runs in its own subprocess (so its peak RSS, from resource.getrusage, is its own):
write a random uint8 tiled BigTIFF of SIZE x SIZE, then predict_tiled with a depth-5 base-16 net
(random weights), reading the input lazily through tifffile/zarr and writing labels to a tiled
BigTIFF as tiles finish. Prints one markdown row per size.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(size: int, workdir: Path, dtype: str) -> dict:
    import numpy as np
    import tifffile
    import torch

    from unet_fast import UNet, image_io
    from unet_fast.inference import plan_tiles, predict_tiled

    source = workdir / f"in{size}.tif"
    rng = np.random.default_rng(0)
    tile = 512

    def tiles():
        for _ in range((size // tile) ** 2):
            yield rng.integers(0, 255, (tile, tile), dtype=np.uint8)

    tifffile.imwrite(source, tiles(), shape=(size, size), dtype=np.uint8, tile=(tile, tile), bigtiff=True)
    rss_after_write = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    model = UNet(depth=5, base_channels=16).eval()
    image, _ = image_io.read_image(source)
    plan = plan_tiles(model, (size, size), device="cpu", dtype=dtype)
    start = time.perf_counter()
    predict_tiled(model, image, dtype=dtype, out=workdir / f"out{size}.tif", progress=False)
    seconds = time.perf_counter() - start
    check = tifffile.imread(workdir / f"out{size}.tif", aszarr=True)
    return {"size": size, "seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_after_writing_input_mib": rss_after_write / 1024, "plan": plan.explain(),
            "output_ok": check is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--dtype", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.workdir, args.dtype)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        print("| size | pixels | seconds | MP/s | ns/pixel | peak RSS MiB | plan |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        for size in args.sizes:
            done = subprocess.run([sys.executable, __file__, "--child", str(size), "--workdir", tmp,
                                   "--dtype", args.dtype], capture_output=True, text=True)
            if done.returncode:
                print(f"| {size} | failed: {done.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            pixels = size * size
            print(f"| {size} | {pixels / 1e6:.1f} M | {r['seconds']:.1f} | {pixels / 1e6 / r['seconds']:.2f} | "
                  f"{r['seconds'] / pixels * 1e9:.0f} | {r['peak_rss_mib']:.0f} | {r['plan']} |", flush=True)
            for path in Path(tmp).iterdir():
                path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
