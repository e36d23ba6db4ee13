"""Where a model's foreground IoU is lost: wrong pixels by their distance to the true outline, and the
IoU of the probability thresholded at several levels.

    python 2026-11-26-iou-error-analysis.py MODEL.safetensors IMAGE.tif LABELS.tif
"""
import sys

import numpy as np
import tifffile
import torch
from scipy import ndimage

from unet_fast.inference import predict_tiled
from unet_fast.model_file import load_model

torch.set_num_threads(1)
model = load_model(sys.argv[1])
image, labels = tifffile.imread(sys.argv[2]), tifffile.imread(sys.argv[3])
instances = predict_tiled(model, image, layout="YX", output="instances")
probability = predict_tiled(model, image, layout="YX", output="probabilities")[1]
truth, predicted = labels > 0, instances > 0
print("IoU", round(float((truth & predicted).sum() / (truth | predicted).sum()), 4))
outside = ndimage.distance_transform_edt(~truth)     # of a false foreground pixel: to the truth
inside = ndimage.distance_transform_edt(truth)       # of a missed pixel: into the truth
for name, wrong, distance in (("false foreground", predicted & ~truth, outside), ("missed", truth & ~predicted, inside)):
    d = distance[wrong]
    print(f"{name}: {wrong.sum()} px; within 1 px {(d <= 1).sum()}, 2 px {(d <= 2).sum()}, 3 px {(d <= 3).sum()}, "
          f"further {(d > 3).sum()}")
for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
    mask = probability > threshold
    print(f"probability > {threshold}: IoU {(truth & mask).sum() / (truth | mask).sum():.4f} (no instance rules)")
