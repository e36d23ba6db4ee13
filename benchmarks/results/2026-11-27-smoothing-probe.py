"""The outline-smoothing experiment of 2026-11-27-outline-smoothing.md: trained models' foreground
probabilities (plain, or --tta), then the instance rules (InstanceOptions' defaults otherwise) on
  prob S      the probability smoothed by a Gaussian of S px, for the mask and the split's cores;
  maskonly S  smoothed for the mask only, the cores from the plain probability (what shipped, S = 1.5);
  and S / or S  the plain mask AND / OR the smoothed one (only removing / only adding pixels);
  logit S     the logit margin smoothed instead, for both.
One JSON line per model, image and variant, appended to OUT.

Usage: python 2026-11-27-smoothing-probe.py OUT.jsonl [--tta] TAG MODEL FOLDER [TAG MODEL FOLDER ...]
         (FOLDER holds images/ and labels/ with one TIFF each)
       python 2026-11-27-smoothing-probe.py OUT.jsonl --synthetic SEED MODEL [SEED MODEL ...]
         (the demo's model of --seed SEED on synthetic_nuclei(3, 400, seed=SEED + 1000))
       python 2026-11-27-smoothing-probe.py --tables OUT.jsonl   (the record's tables, from the lines)"""
import collections
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

from unet_fast.evaluation import _instances_of, score_instances
from unet_fast.inference import predict_tiled
from unet_fast.instances import InstanceOptions, label_instances
from unet_fast.model_file import load_model
from unet_fast.synthetic import synthetic_nuclei

VARIANTS = [("prob", 0)] + [(kind, s) for kind in ("prob", "maskonly", "and", "or", "logit")
                            for s in (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)]


def cases(args):
    if args[0] == "--synthetic":
        for seed, model in zip(args[1::2], args[2::2]):
            images, labels = synthetic_nuclei(3, 400, seed=int(seed) + 1000)
            for k in range(3):
                yield f"demo-s{seed}-i{k}", model, images[k], labels[k]
    else:
        for tag, model, folder in zip(args[0::3], args[1::3], args[2::3]):
            yield (tag, model, tifffile.imread(next(Path(folder, "images").glob("*.tif"))),
                   tifffile.imread(next(Path(folder, "labels").glob("*.tif"))))


def main(out_path, *args):
    torch.set_num_threads(1)
    tta = args[0] == "--tta"
    args = args[1:] if tta else args
    options = InstanceOptions(smoothing=0)
    with open(out_path, "a") as out:
        for tag, model_path, image, labels in cases(list(args)):
            truth = _instances_of(np.asarray(labels))
            logits = predict_tiled(load_model(model_path), np.asarray(image), output="logits", tta=tta, progress=False)
            margin = (logits[1] - logits[0]).astype(np.float32)
            raw = (1 / (1 + np.exp(-margin))).astype(np.float32)
            for kind, sigma in VARIANTS:
                if kind == "logit":
                    p = (1 / (1 + np.exp(-ndimage.gaussian_filter(margin, sigma, mode="reflect")))).astype(np.float32)
                else:
                    p = ndimage.gaussian_filter(raw, sigma, mode="reflect") if sigma else raw
                mask = p > 0.5
                if kind == "and":
                    mask &= raw > 0.5
                elif kind == "or":
                    mask |= raw > 0.5
                cores = p if kind in ("prob", "logit") else raw
                s = score_instances(label_instances(mask, options, probability=cores), truth, tag)
                out.write(json.dumps(dict(tag=tag, tta=tta, kind=kind, sigma=sigma, iou=s.iou, f1=s.f1,
                                          ap=s.ap_50_95, tp=s.true_positives, fp=s.false_positives,
                                          fn=s.false_negatives)) + "\n")


GROUPS = {"cross-validation (12 models)": ("def-f",), "halves (4 models)": ("def-top", "def-bottom"),
          "synthetic (3 demo models x 3 images)": ("demo",)}


def tables(path):
    rows = [json.loads(line) for line in open(path)]
    for (name, prefixes), tta, kinds in [(g, False, ("maskonly", "prob", "and", "or", "logit")) for g in GROUPS.items()] \
            + [(("cross-validation (12 models)", ("def-f",)), True, ("maskonly",))]:
        mine = [r for r in rows if r["tag"].startswith(prefixes)]
        base = {r["tag"]: r for r in mine if not r["tta"] and r["kind"] == "prob" and r["sigma"] == 0}
        by = collections.defaultdict(list)
        for r in mine:
            if r["tta"] == tta:
                by[r["kind"], r["sigma"]].append(r)
        print(f"\n{name}{', --tta' if tta else ''}; up / down: against no smoothing without --tta\n")
        print("| variant | mean IoU | IoU up / down | mean F1 | pooled F1 (matched / false / missed) | F1 up / down "
              "| mean AP 0.5-0.95 |\n|---|---:|---|---:|---|---|---:|")
        for key in [("prob", 0)] + [(k, s) for k in kinds for s in sorted({v[1] for v in VARIANTS if v[1]})]:
            rs = by.get(key, [])
            if not rs:
                continue
            n, tp, fp, fn = len(rs), sum(r["tp"] for r in rs), sum(r["fp"] for r in rs), sum(r["fn"] for r in rs)
            moved = [(sum(r[m] > base[r["tag"]][m] for r in rs), sum(r[m] < base[r["tag"]][m] for r in rs))
                     for m in ("iou", "f1")]
            label = "none" if key == ("prob", 0) else f"{key[0]} {key[1]:g}"
            print(f"| {label} | {sum(r['iou'] for r in rs) / n:.4f} | {moved[0][0]} / {moved[0][1]} | "
                  f"{sum(r['f1'] for r in rs) / n:.3f} | {2 * tp / (2 * tp + fp + fn):.3f} ({tp} / {fp} / {fn}) | "
                  f"{moved[1][0]} / {moved[1][1]} | {sum(r['ap'] for r in rs) / n:.3f} |")


if __name__ == "__main__":
    if sys.argv[1] == "--tables":
        tables(sys.argv[2])
    else:
        main(*sys.argv[1:])
