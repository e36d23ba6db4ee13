"""Sparse annotation on the real nuclei image: does --ignore-label let a net learn from a few outlined nuclei?

The real image (../shared/data/real-nuclei-dev, 512 x 256, 73 nuclei) is split: rows 0-255 train, rows 256-511
are scored (full labels) by `unet-fast evaluate`. In the training half an annotator is imitated in one of two ways:
  objects: a fraction of the nuclei outlined (chosen at random), and as background the pixels more than GAP px
           from every nucleus and a 3 px ring around each outlined one; everything else not annotated;
  regions: boxes annotated completely (two 96 x 96 boxes at random places, about 28 % of the half); the rest not. Three arms train with the default recipe on the same images:
  full:   every nucleus annotated (the upper bound);
  naive:  the sparse labels with the unannotated pixels as background (what a user without an ignore label does);
  ignore: the sparse labels with the unannotated pixels as --ignore-label 65535.
Run: python benchmarks/results/2026-11-27-sparse-labels.py OUTDIR {objects,regions} [FRACTION] [SEEDS...]
(an arm whose model.safetensors exists is scored again, not retrained).
"""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-nuclei-dev"
GAP = 5
IGNORE = 65535


def sparse_labels(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    ids = np.unique(labels[labels > 0])
    chosen = np.random.default_rng(seed).choice(ids, size=max(1, round(fraction * len(ids))), replace=False)
    far = ndimage.distance_transform_edt(labels == 0) > GAP
    sparse = np.full(labels.shape, IGNORE, np.uint16)
    sparse[far] = 0
    kept = np.isin(labels, chosen)
    ring = ndimage.binary_dilation(kept, iterations=3) & (labels == 0)   # background next to an outlined nucleus
    sparse[ring] = 0
    sparse[kept] = labels[kept]
    return sparse


def sparse_regions(labels: np.ndarray, seed: int, box: int = 96, boxes: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sparse = np.full(labels.shape, IGNORE, np.uint16)
    for _ in range(boxes):
        y, x = (int(rng.integers(0, side - box + 1)) for side in labels.shape)
        sparse[y:y + box, x:x + box] = labels[y:y + box, x:x + box]
    return sparse


def run(*args):
    subprocess.run([sys.executable, "-m", "unet_fast.cli", *map(str, args)], check=True)


def main(out: Path, mode: str, fraction: float, seeds: list[int]) -> None:
    image = tifffile.imread(DATA / "images" / "nuclei.tif")
    labels = tifffile.imread(DATA / "labels" / "nuclei.tif")
    test = out / "test"
    for sub in ("images", "labels"):
        (test / sub).mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(test / "images" / "bottom.tif", image[256:])
    tifffile.imwrite(test / "labels" / "bottom.tif", labels[256:])
    rows = []
    for seed in seeds:
        sparse = sparse_labels(labels[:256], fraction, seed) if mode == "objects" else sparse_regions(labels[:256], seed)
        arms = {"full": (labels[:256], []), "naive": (np.where(sparse == IGNORE, 0, sparse).astype(np.uint16), []),
                "ignore": (sparse, ["--ignore-label", IGNORE])}
        for arm, (label, flags) in arms.items():
            folder = out / f"seed{seed}-{arm}"
            for sub in ("images", "labels"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / "images" / "top.tif", image[:256])
            tifffile.imwrite(folder / "labels" / "top.tif", label)
            model = folder / "model.safetensors"
            if not model.exists():
                run("train", "--images", folder / "images", "--labels", folder / "labels", "-o", model,
                    "--seed", seed, "--no-progress", *flags)
            run("evaluate", "-m", model, "--images", test / "images", "--labels", test / "labels",
                "-o", folder / "evaluation", "--no-progress")
            with open(folder / "evaluation" / "evaluation.csv") as handle:
                row = next(r for r in csv.DictReader(handle) if r["name"] == "bottom")
            annotated = float(np.mean(label != IGNORE)) if arm == "ignore" else 1.0
            rows.append((mode, seed, arm, annotated, row["iou"], row["f1"], row["precision"], row["recall"],
                         row["ap_50_95"]))
            print(*rows[-1], flush=True)
    with open(out / "results.csv", "w") as handle:
        csv.writer(handle).writerows([("mode", "seed", "arm", "annotated", "iou", "f1", "precision", "recall",
                                       "ap_50_95"),
                                      *rows])


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.3,
         [int(s) for s in sys.argv[4:]] or [0, 1, 2])
