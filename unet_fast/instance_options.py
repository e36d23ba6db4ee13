"""The rules that make a foreground mask into instance labels, as numbers (``InstanceOptions``): apart from
``unet_fast.instances``, which applies them with scipy, so the command line and segmenting to classes or
probabilities load no scipy (a third to half a second of every start). ``unet_fast.instances`` re-exports them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

# below 0.125 px scipy's Gaussian is the identity (its radius, 4 sigma rounded, is 0); under 0.1 px is refused as
# a likely slip, a width scaled under it becomes 0 (in_image_pixels)
MIN_SMOOTHING, MAX_SMOOTHING, DEFAULT_SMOOTHING = 0.1, 64.0, 1.5
#: the widest ``border`` (px): rule 4 looks at every offset within it, about pi * border^2 of them for every pixel
#: (64 px: 9 s for a 512 x 256 image on one core; 1000 px, hours, with no sign of progress)
MAX_BORDER = 64


@dataclass(frozen=True)
class InstanceOptions:
    """How a foreground mask becomes instance labels (see the module docstring for the rules).

    min_size: objects of fewer pixels (as predicted, before filling holes) are removed; 0 keeps all.
    fill_holes: background regions enclosed by one object join it.
    border: px; background pixels within this distance of two objects join the nearest (0: off; at most
    ``MAX_BORDER``).
    threshold: a 2-class network's foreground is where its foreground probability (smoothed, see
    ``smoothing``) is above this; ``label_instances`` takes the mask as given.
    smoothing: px, the sigma of a Gaussian (scipy's ``gaussian_filter``, mirrored at the image's edges)
    applied to the foreground probability before the threshold, for the mask only (cores for ``split``
    are the probability's own); 0: off, else from 0.1 to 64 px; None (the default): 1.5 px, or 0 without
    ``split``, resolved when the options are made (``dataclasses.replace`` keeps the number), since it needs it:
    a smoothed foreground bridges more of the thin valleys between touching objects and only the split
    parts them again (without the split, 15 real models found 17 of 369 nuclei fewer). A network's outline is ragged to a pixel where a hand-drawn one is
    smooth: on real nuclei (the dev image of issue 11, models of the default recipe) 1.5 px raised
    foreground IoU from 0.849 to 0.853 in 12 cross-validation runs and from 0.837 to 0.843 in 4 half-image
    runs (up in 14 of the 16), object F1 the same or better (pooled 0.877 -> 0.878, 0.861 -> 0.880); on the
    demo's synthetic nuclei (3 models, 9 held-out images) IoU 0.914 -> 0.936, one object fewer of 635. Wider
    Gaussians join touching objects that have no core of their own (2 px: 14 fewer found on the synthetic
    images). ``benchmarks/results/2026-11-27-outline-smoothing.md`` has every width tried.
    split: None (off), or a probability above ``threshold``: objects with two or more cores (regions
    of at least ``core_size`` pixels above it) are divided among them (rule 1 of the module docstring).
    A mask alone (``label_instances`` without probabilities) cannot be split.

    The defaults, measured on real nuclei (the dev image of issue 11, 3 models of the default recipe
    trained 4 minutes on its top half, scored on its bottom half): object F1 at IoU 0.5 0.70 for the
    plain components, 0.85 with ``split=0.9`` (0.845 with 0.8), foreground IoU unchanged (0.82); on the
    demo's synthetic nuclei (3 models, 3 held-out images each) F1 0.978 -> 0.984, IoU 0.880 -> 0.895.
    The Dice term of the default recipe (session 20) makes the probabilities surer, so two touching nuclei
    more often share one core above 0.9: in 12 cross-validation runs on the dev image, ``split=0.95`` found
    5 more nuclei (pooled F1 0.865 -> 0.877; F1 up in 3 runs, down in none; IoU unchanged), the half-image
    check 3 more (0.842 -> 0.850, 2 runs up, 2 down), the demo 2 more (0.990 -> 0.995); 0.98 began to cut
    nuclei in two (8 more false objects). These numbers were measured with the split's earlier flood (scipy's
    ``watershed_ift``); the fixed one found 2 more nuclei and 2 fewer false ones in the same 16 real models
    (``benchmarks/results/2026-11-27-split-flood.md``).
    """

    min_size: int = 15
    fill_holes: bool = True
    border: int = 2
    threshold: float = 0.5
    split: float | None = 0.95
    core_size: int = 5
    smoothing: float | None = None

    def __post_init__(self):
        if self.smoothing is None:                  # resolved now: equal, hashed and recorded as the number
            object.__setattr__(self, "smoothing", DEFAULT_SMOOTHING if self.split is not None else 0.0)
        for name in ("min_size", "border"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.border > MAX_BORDER:
            raise ValueError(f"border must be at most {MAX_BORDER} px (the width of the background borders between "
                             f"touching objects, 1 or 2 px as a U-Net learns them; every pixel looks that far), "
                             f"got {self.border}")
        if not isinstance(self.fill_holes, (bool, np.bool_)):
            raise ValueError(f"fill_holes must be True or False, got {self.fill_holes!r}")
        if not (isinstance(self.threshold, (int, float, np.floating)) and 0 < self.threshold < 1):
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        if self.split is not None and not (isinstance(self.split, (int, float, np.floating))
                                           and self.threshold < self.split < 1):
            raise ValueError(f"split must be None or a probability in (threshold, 1) = ({self.threshold}, 1), "
                             f"got {self.split!r}")
        if not isinstance(self.core_size, (int, np.integer)) or isinstance(self.core_size, bool) or self.core_size < 1:
            raise ValueError(f"core_size must be a positive integer, got {self.core_size!r}")
        if isinstance(self.smoothing, (bool, np.bool_)) or not isinstance(self.smoothing, (int, float, np.integer,
                                                                                          np.floating)) \
                or not (self.smoothing == 0 or MIN_SMOOTHING <= self.smoothing <= MAX_SMOOTHING):
            raise ValueError(f"smoothing must be 0 (off) or a sigma in px from {MIN_SMOOTHING} to {MAX_SMOOTHING}, "
                             f"got {self.smoothing!r}")
        # plain Python numbers, as they are recorded (JSON) and compared
        for name, kind in (("min_size", int), ("border", int), ("core_size", int), ("threshold", float),
                           ("smoothing", float)) + ((("split", float),) if self.split is not None else ()):
            object.__setattr__(self, name, kind(getattr(self, name)))

    def in_image_pixels(self, scale: float) -> "InstanceOptions":
        """These rules on the grid of an image that a model resamples by ``scale`` before the network
        (``unet_fast.rescale``): ``min_size``, ``border`` and ``core_size`` are measured in the network's
        pixels, where the model learnt its objects and the borders between them, so on the image's grid an
        area is 1 / scale^2 times as many pixels and a distance 1 / scale times (``smoothing`` too, at most
        ``MAX_SMOOTHING`` px of the image, and 0 under ``MIN_SMOOTHING``; ``border`` at most ``MAX_BORDER``).
        The same objects then come out whatever size the nuclei have in the image (on the dev nuclei
        magnified 2.5x and segmented at scale 0.4 by 12 models, pooled object F1 0.777 -> 0.786, 10 fewer
        specks kept)."""
        if scale == 1:
            return self
        smoothing = min(self.smoothing / scale, MAX_SMOOTHING)
        return dataclasses.replace(self, min_size=round(self.min_size / scale ** 2),
                                   border=min(round(self.border / scale), MAX_BORDER),
                                   core_size=max(1, round(self.core_size / scale ** 2)),
                                   smoothing=smoothing if smoothing >= MIN_SMOOTHING else 0.0)
