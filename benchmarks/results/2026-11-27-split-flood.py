"""The split's watershed, before and after 2026-11-27 (2026-11-27-split-flood.md): the same models' instance
output (every InstanceOptions default: what `segment --output instances` and `evaluate` make) with the split's
flood as scipy's watershed_ift ran it (paths cost their steepest step, "before") and as Meyer's flooding
(paths cost their highest level, instances._flood, "after"). One prediction per image; one JSON line per model,
image and flood, appended to OUT.

Usage: python 2026-11-27-split-flood.py OUT.jsonl TAG MODEL FOLDER [TAG MODEL FOLDER ...]
         (FOLDER holds images/ and labels/ with one TIFF each)
       python 2026-11-27-split-flood.py OUT.jsonl --synthetic SEED MODEL [SEED MODEL ...]
         (the demo's model of --seed SEED on synthetic_nuclei(3, 400, seed=SEED + 1000))
       python 2026-11-27-split-flood.py --tables OUT.jsonl"""
import collections
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from unet_fast import instances
from unet_fast.evaluation import _instances_of, score_instances
from unet_fast.inference import predict_tiled
from unet_fast.model_file import load_model

FOUR = ndimage.generate_binary_structure(2, 1)
# the same cases (models, images, labels) and groups as the smoothing experiment's
_spec = importlib.util.spec_from_file_location("smoothing_probe", Path(__file__).with_name("2026-11-27-smoothing-probe.py"))
_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_probe)
cases, GROUPS = _probe.cases, _probe.GROUPS


def steepest_step_flood(level, markers, inside):
    """The split's flood before 2026-11-27, as it was called (the outside dearer than any pixel inside)."""
    cost = np.where(inside, level, 255).astype(np.uint8)
    return np.where(inside, ndimage.watershed_ift(cost, np.where(inside, markers, 0).astype(np.int32), FOUR), 0)


FLOODS = {"before": steepest_step_flood, "after": instances._flood}


def main(out_path, *args):
    torch.set_num_threads(1)
    with open(out_path, "a") as out:
        for tag, model_path, image, labels in cases(list(args)):
            truth = _instances_of(np.asarray(labels))
            model = load_model(model_path)
            for name, flood in FLOODS.items():
                instances._flood = flood
                got = predict_tiled(model, np.asarray(image), output="instances", progress=False)
                s = score_instances(got, truth, tag)
                out.write(json.dumps(dict(tag=tag, flood=name, iou=s.iou, f1=s.f1, ap=s.ap_50_95,
                                          tp=s.true_positives, fp=s.false_positives, fn=s.false_negatives)) + "\n")
            instances._flood = FLOODS["after"]


def tables(path):
    rows = [json.loads(line) for line in open(path)]
    print("| models | flood | mean IoU | mean F1 | pooled F1 (matched / false / missed) | F1 up / down | mean AP 0.5-0.95 |")
    print("|---|---|---:|---:|---|---|---:|")
    for name, prefixes in GROUPS.items():
        by = collections.defaultdict(dict)
        for r in rows:
            if r["tag"].startswith(prefixes):
                by[r["flood"]][r["tag"]] = r
        for flood in FLOODS:
            rs = list(by[flood].values())
            if not rs:
                continue
            n, tp, fp, fn = len(rs), sum(r["tp"] for r in rs), sum(r["fp"] for r in rs), sum(r["fn"] for r in rs)
            moved = (f"{sum(r['f1'] > by['before'][r['tag']]['f1'] for r in rs)} / "
                     f"{sum(r['f1'] < by['before'][r['tag']]['f1'] for r in rs)}") if flood == "after" else ""
            print(f"| {name} | {flood} | {sum(r['iou'] for r in rs) / n:.4f} | {sum(r['f1'] for r in rs) / n:.3f} | "
                  f"{2 * tp / (2 * tp + fp + fn):.3f} ({tp} / {fp} / {fn}) | {moved} | {sum(r['ap'] for r in rs) / n:.3f} |")


if __name__ == "__main__":
    if sys.argv[1] == "--tables":
        tables(sys.argv[2])
    else:
        main(*sys.argv[1:])
