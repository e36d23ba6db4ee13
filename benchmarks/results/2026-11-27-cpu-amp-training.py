"""bf16 autocast training (--amp) on the CPU against fp32, with the default recipe, on the real nuclei image.

The real image (../shared/data/real-nuclei-dev, 512 x 256, 73 nuclei) is split in halves; each fold trains on one
half (`unet-fast train --threads 1`, the default recipe) and `unet-fast evaluate` scores the other. Reported per run:
the training's CPU seconds (getrusage of the child: comparable while other work shares the cores; wall seconds too)
and the held-out IoU, F1 and AP. Two runs go at a time (one thread each).

    python benchmarks/results/2026-11-27-cpu-amp-training.py OUTDIR [SEEDS...]
"""
import concurrent.futures
import csv
import resource
import subprocess
import sys
import time
from pathlib import Path

import tifffile

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-nuclei-dev"
FOLDS = {"top": (slice(0, 256), slice(256, 512)), "bottom": (slice(256, 512), slice(0, 256))}


def cli(*args):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "unet_fast.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return time.perf_counter() - start


def arm(out: Path, fold: str, seed: int, amp: bool) -> tuple:
    image = tifffile.imread(DATA / "images" / "nuclei.tif")
    labels = tifffile.imread(DATA / "labels" / "nuclei.tif")
    train, test = FOLDS[fold]
    folder = out / f"{fold}-s{seed}-{'amp' if amp else 'fp32'}"
    for part, rows in (("train", train), ("test", test)):
        for sub, array in (("images", image), ("labels", labels)):
            (folder / part / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / part / sub / "half.tif", array[rows])
    model = folder / "model.safetensors"
    # CPU seconds of this child alone: time it in a wrapper process of its own
    wrapper = (f"import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               f"r = resource.getrusage(resource.RUSAGE_CHILDREN); print(r.ru_utime + r.ru_stime)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "unet_fast.cli", "train",
                           "--images", folder / "train" / "images", "--labels", folder / "train" / "labels",
                           "-o", model, "--seed", str(seed), "--threads", "1", "--no-progress",
                           *(["--amp"] if amp else [])], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    wall, cpu = time.perf_counter() - start, float(done.stdout.strip().splitlines()[-1])
    cli("evaluate", "-m", model, "--images", folder / "test" / "images", "--labels", folder / "test" / "labels",
        "-o", folder / "evaluation", "--no-progress")
    with open(folder / "evaluation" / "evaluation.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["name"] == "half")
    result = (fold, seed, "amp" if amp else "fp32", round(cpu, 1), round(wall, 1), row["iou"], row["f1"],
              row["ap_50_95"])
    print(*result, flush=True)
    return result


def main(out: Path, seeds: list[int]) -> None:
    jobs = [(fold, seed, amp) for seed in seeds for fold in FOLDS for amp in (False, True)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda job: arm(out, *job), jobs))
    with open(out / "results.csv", "w") as handle:
        csv.writer(handle).writerows([("fold", "seed", "arm", "train_cpu_s", "train_wall_s", "iou", "f1", "ap_50_95"),
                                      *rows])


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(s) for s in sys.argv[2:]] or [0, 1])
