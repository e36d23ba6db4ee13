"""Validation of a model on whole labelled images: the weighted loss, foreground IoU and object F1,
by the same overlap-tile inference and instance rules as segmentation (``predict_tiled``,
``unet_fast.instances``)."""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from .data import IGNORE, SegmentationDataset
from .inference import argmax_classes, predict_tiled
from .instances import InstanceOptions, foreground_mask, label_instances
from .losses import WeightedSoftmaxCrossEntropy
from .metrics import object_scores, without_ignored_objects
from .normalization import Normalization
from .ops._library import memory_format_of
from .ranks import shared_failures


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: SegmentationDataset, *, device=None, amp: bool = False,
             loss_fn: Callable | None = None, rank: int = 0, world: int = 1,
             instance_options: InstanceOptions | None = None) -> dict:
    """Whole-image validation by overlap-tile inference (``predict_tiled``): {"loss", "iou", "object_f1"}.

    loss: ``loss_fn`` (default: the weighted cross-entropy; in ``fit``, the training loss, its Dice term
    included) of each whole image, averaged over the images weighted by their pixels; the predicted objects
    are the instances of the predicted foreground (a 2-class model's as ``segment --output instances`` makes
    them, smoothing included; with more classes, every class but 0) by ``instance_options`` (default:
    ``InstanceOptions()``, as ``unet-fast segment --output instances``); iou: their foreground IoU pooled over all pixels of all
    images; object_f1: their F1 matched to the labelled instances at IoU >= 0.5
    (``metrics.object_scores``), pooled over images. An image with no true and no predicted object adds
    nothing to either (it is left out, not scored 1.0); when no image has a true or a predicted
    foreground pixel the IoU is NaN, and when none has a true or a predicted object the F1 is NaN
    (undefined, as ``evaluate_model`` leaves such scores out of its means; ``fit`` never picks a best
    model by a NaN). Pixels not annotated (target ``IGNORE``, the dataset's ``ignore_label``) count in no
    score and in no pixel count, and predicted objects lying mostly in them are left out
    (``metrics.without_ignored_objects``). With ``world`` > 1 each rank takes every world-th
    image and the sums are all-reduced, so every rank returns the same numbers (or raises, if one rank failed).
    """
    loss_fn = loss_fn or WeightedSoftmaxCrossEntropy()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    largest = max((p for p in model.parameters() if p.dim() == 4), key=torch.numel, default=None)
    layout = memory_format_of(largest) if largest is not None else torch.contiguous_format
    model.eval()
    # loss sum, pixels, intersection, union, true positives, false positives, false negatives
    sums = torch.zeros(7, dtype=torch.float64)
    with shared_failures("validation") if world > 1 else contextlib.nullcontext():
        for index in range(rank, len(images), world):
            sample = images[index]
            logits = torch.from_numpy(predict_tiled(model, sample.image, layout="CYX", device=device,
                                                    dtype="bf16" if amp else None, output="logits", progress=False,
                                                    normalization=Normalization(mode="none"),
                                                    scale=1.0))  # the dataset resampled its images
            target = torch.from_numpy(sample.target).to(device)
            weights = torch.from_numpy(sample.weights).to(device)
            ignored = sample.target == IGNORE
            pixels = target.numel() - int(np.count_nonzero(ignored))   # the loss's mean is over these
            # predict_tiled hands the logits back on the CPU; the loss runs where training ran it
            loss = float(loss_fn(logits[None].to(device), target[None], weights[None])) * pixels
            options = instance_options or InstanceOptions()
            if logits.shape[0] == 2:          # as predict_tiled(output="instances")
                probability = torch.softmax(logits, 0)[-1].cpu().numpy()
                foreground = foreground_mask(probability, options)
            else:                             # every class but 0 is foreground, as it is
                options = InstanceOptions(options.min_size, options.fill_holes, options.border, split=None)
                probability, foreground = None, argmax_classes(logits.cpu()).numpy() > 0
            instances = without_ignored_objects(label_instances(foreground, options, probability=probability),
                                                ignored)
            predicted = (instances > 0) & ~ignored
            truth = sample.instances > 0
            objects = object_scores(instances, sample.instances)
            tp, fp, fn = objects.true_positives, objects.false_positives, objects.false_negatives
            sums += torch.tensor([loss, pixels, np.sum(predicted & truth), np.sum(predicted | truth), tp, fp, fn],
                                 dtype=torch.float64)
    if world > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.to(memory_format=layout)    # predict_tiled left it channels_last
    model.train(was_training)
    loss, pixels, intersection, union, tp, fp, fn = sums.tolist()
    return {"loss": loss / max(pixels, 1), "iou": intersection / union if union else float("nan"),
            "object_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")}
