"""Training recipes as data: every choice a training run makes, named, so that ``unet-fast train
--recipe NAME`` and ``fit(recipe=NAME)`` start from the same values and each value can be overridden.

- "default": converges in minutes on a CPU (seconds on a GPU) from one or a few annotated images: a
  small valid U-Net (depth 3, base 16), Adam with a linear warm-up and a cosine decay, batches of 4
  tiles of 140 px, exact 90-degree rotations and flips, a mild elastic deformation and grey-value
  changes, no dropout, the paper's weight maps with half its border weight (w0 5) weighting the
  cross-entropy, plus a soft Dice loss of the foreground (dice 1); images whose objects are
  not about 24 px across
  (within 1.25x) resampled so that they are, in training and inference alike.
- "paper": Ronneberger et al. (2015): depth 5, base 64, dropout 0.5, SGD with momentum 0.99 at a
  constant rate, batch 1 with the largest tile up to 572 px, rotations by any angle, the elastic
  deformation of a 3 x 3 lattice with 10 px displacements, grey values.

A recipe has four kinds of values: the network's (depth, base_channels, dropout, padding), the
inputs' (percentiles, clip: ``normalization()``; object_size: ``unet_fast.rescale``), the loss's (w0,
sigma, class_weights: see ``unet_weight_map``; dice: ``losses.training_loss``) and training's (the rest).
``fit`` takes the model and data as given and uses the training values (the loss's dice included);
``unet-fast train`` builds all of them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import geometry
from .normalization import Normalization
from .augment import Compose, RandomElasticDeform, RandomFlip, RandomGreyValue, RandomImaging, RandomNoise, \
    RandomRot90, RandomRotation, RandomZoom

__all__ = ["Recipe", "RECIPES", "UNRECORDED_VALUES", "AUGMENTATION_OFF", "AUGMENTATION_FIELDS", "same_value",
           "get_recipe", "OPTIMIZERS", "LR_SCHEDULES", "ROTATIONS"]

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
ROTATIONS = ("90", "any", "none")


@dataclass(frozen=True)
class Recipe:
    """Every value of a training run (see the module docstring); ``replace`` changes some."""

    name: str
    # the network
    depth: int
    base_channels: int
    dropout: float
    padding: str = "valid"
    # the inputs: (x - P_low) / (P_high - P_low) with the image's percentiles, clipped to [0, 1] with clip
    percentiles: tuple[float, float] = (1.0, 99.8)
    clip: bool = False
    # px: images whose labels' median object diameter is not within 1.25x of this are resampled to it,
    # in training and (the factor stored with the model) in inference (unet_fast.rescale); 0: never
    object_size: float = 0.0
    # the targets: the paper's weight map
    w0: float = 10.0
    sigma: float = 5.0
    class_weights: str | None = "balanced"
    # the loss: the weighted cross-entropy, plus this times the soft Dice loss of the foreground (0: none)
    dice: float = 0.0
    # the tiles and how many
    tile_size: int | None = None      # None: the largest legal tile up to 572 px whose output fits the images
    batch_size: int = 1
    tiles_per_epoch: int | None = None   # None: about one pass over the images' pixels
    epochs: int = 50
    # the optimisation
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.99            # SGD's momentum; Adam's beta1
    weight_decay: float = 0.0
    lr_schedule: str = "constant"     # "cosine": from lr to 0 over the run (steps or time limit)
    warmup_steps: int = 0             # the rate grows linearly from lr / warmup_steps to lr over these steps
    # the augmentation, drawn anew for every tile
    flips: bool = True
    rotation: str = "any"             # "90": by multiples of 90 degrees (exact); "any": any angle; "none"
    zoom: tuple[float, float] = (1.0, 1.0)   # magnification drawn log-uniformly from (low, high); (1, 1): none
    elastic_sigma: float = 10.0       # px: displacements of the elastic deformation's lattice (0: none)
    elastic_grid: int = 3
    grey_values: bool = True          # random gamma, contrast and brightness
    gamma: tuple[float, float] = (0.7, 1.4)   # the grey values' range of gamma
    imaging: bool = False             # random blur, uneven illumination and noise, each on a fifth of the tiles
    noise: float = 0.0                # std of added Gaussian noise on every tile (normalised units; 0: none)
    # a callable given to fit as ``augment``, by its qualified name (not its parameters), or "tiles of <dataset
    # class>" for data that bring their own tiles; "" for none: the fields above are then off in the record,
    # since what such augmentation does cannot be recorded
    custom_augmentation: str = ""
    # a loss_fn given to fit, by its qualified name ("" for none: the weighted cross-entropy plus ``dice``)
    custom_loss: str = ""

    def __post_init__(self):
        for name in ("custom_augmentation", "custom_loss"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a str (\"\": none), got {getattr(self, name)!r}")
        # types first: a recipe can come from a checkpoint or model file (untrusted JSON), where lr "x" failed
        # as "'>' not supported between instances of 'str' and 'int'", naming no field
        for name in NUMBER_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
        for name in SWITCH_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.percentiles, (tuple, list)) and len(self.percentiles) == 2):
            raise ValueError(f"percentiles must be two numbers (low, high), got {self.percentiles!r}")
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        self._range("gamma", lambda low, high: 0 < low and high < math.inf, "(low, high) with 0 < low <= high")
        self._range("zoom", lambda low, high: 1 / 8 <= low and high <= 8,
                    "of magnifications (low, high) with 1/8 <= low <= high <= 8 ((1, 1): none)")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("rotation", self.rotation, ROTATIONS)
        _check_choice("padding", self.padding, geometry.PADDINGS)
        for name in ("depth", "base_channels", "batch_size", "epochs", "elastic_grid"):
            _check_int(name, getattr(self, name), 1)
        for name in ("tile_size", "tiles_per_epoch"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        for name in ("weight_decay", "elastic_sigma", "noise", "w0", "object_size", "dice"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not math.isfinite(self.dice):
            raise ValueError(f"dice must be a finite weight >= 0 (0: no Dice term), got {self.dice!r}")
        if not math.isfinite(self.object_size):
            raise ValueError(f"object_size must be a finite number of px (0: never resample), got {self.object_size!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")
        try:
            self.normalization()
        except ValueError as error:
            raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got "
                             f"{self.percentiles}: {error}") from error

    def _range(self, name: str, within, wanted: str) -> None:
        """Field ``name`` as a (low, high) tuple of floats with low <= high and ``within(low, high)``."""
        value = getattr(self, name)
        if not (isinstance(value, (tuple, list)) and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                and value[0] <= value[1] and within(*value)):
            raise ValueError(f"{name} must be a range {wanted}, got {value!r}")
        object.__setattr__(self, name, tuple(float(v) for v in value))

    def normalization(self) -> Normalization:
        """How raw pixels become the network's inputs (stored with the model, applied by inference too)."""
        low, high = self.percentiles
        return Normalization(mode="percentile", low=low, high=high, clip=self.clip)

    def replace(self, **changes) -> "Recipe":
        """A copy with ``changes``; None values leave a field as it is (so unset flags can be passed)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown recipe fields {sorted(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def augmentation(self) -> Compose | None:
        """The random transforms of one training tile, in this order: flips, rotation, zoom, elastic
        deformation, grey values, imaging conditions, noise; None when there are none."""
        transforms = [RandomFlip()] if self.flips else []
        transforms += {"90": [RandomRot90()], "any": [RandomRotation(180.0)], "none": []}[self.rotation]
        if self.elastic_sigma > 0:     # the zoom in the deformation's resampling: labels resampled once
            transforms.append(RandomElasticDeform(grid=self.elastic_grid, sigma=self.elastic_sigma, zoom=self.zoom))
        elif self.zoom != (1.0, 1.0):
            transforms.append(RandomZoom(self.zoom))
        if self.grey_values:
            transforms.append(RandomGreyValue(gamma=self.gamma))
        if self.imaging:
            transforms.append(RandomImaging())
        if self.noise > 0:
            transforms.append(RandomNoise(self.noise))
        return Compose(transforms) if transforms else None

    def without_augmentation(self) -> "Recipe":
        """This recipe with every random transform off (``augmentation()`` is None), so a model file
        records that it trained on the images as they are."""
        return dataclasses.replace(self, **AUGMENTATION_OFF)

    def tile_for(self, depth: int, padding: str) -> int | None:
        """The recipe's tile size for a network of ``depth`` and ``padding``: the smallest legal input
        whose output covers at least as many pixels as ``tile_size`` gives the recipe's own network
        (the same tile for that network; None stays None: planned from the images)."""
        if self.tile_size is None:
            return None
        wanted = (geometry.output_size(self.tile_size, self.depth, self.padding)
                  if geometry.is_valid_input_size(self.tile_size, self.depth, self.padding) else 1)
        n = geometry.min_input_size(depth, padding)
        while not (geometry.is_valid_input_size(n, depth, padding) and geometry.output_size(n, depth, padding) >= wanted
                   and n >= (self.tile_size if wanted == 1 else 0)):
            n += 1
        return n

    def describe(self) -> str:
        """One line: the optimisation and the augmentation."""
        optimiser = f"{self.optimizer} lr {self.lr:g}" + (f" momentum {self.momentum:g}" if self.optimizer == "sgd"
                                                          else "")
        if self.weight_decay:
            optimiser += f" weight decay {self.weight_decay:g}"
        schedule = self.lr_schedule + (f" with {self.warmup_steps} warm-up steps" if self.warmup_steps else "")
        augmentation = ", ".join(
            part for part in (
                "flips" if self.flips else "",
                {"90": "90-degree rotations", "any": "rotations", "none": ""}[self.rotation],
                f"zoom {self.zoom[0]:g}-{self.zoom[1]:g}" if self.zoom != (1.0, 1.0) else "",
                f"elastic {self.elastic_sigma:g} px" if self.elastic_sigma else "",
                f"grey values (gamma {self.gamma[0]:g}-{self.gamma[1]:g})" if self.grey_values else "",
                "blur, uneven illumination and noise on a fifth of the tiles each" if self.imaging else "",
                f"noise {self.noise:g}" if self.noise else "",
                f"custom ({self.custom_augmentation})" if self.custom_augmentation else "") if part) or "none"
        loss = f"custom ({self.custom_loss})" if self.custom_loss else \
            "weighted cross-entropy" + (f" + {self.dice:g} x soft Dice" if self.dice else "")
        return f"{optimiser}, {schedule}; loss: {loss}; augmentation: {augmentation}"


#: the augmentation fields, each at the value that turns it off (gamma only shapes grey values, which are off)
AUGMENTATION_OFF = dict(flips=False, rotation="none", zoom=(1.0, 1.0), elastic_sigma=0.0, grey_values=False,
                        imaging=False, noise=0.0)


#: every augmentation field: AUGMENTATION_OFF's, those that only shape one of them, and the custom callable's name
AUGMENTATION_FIELDS = (*AUGMENTATION_OFF, "gamma", "elastic_grid", "custom_augmentation")


def same_value(a, b) -> bool:
    """Whether two recipe values are equal, a model file's JSON lists equal to the recipe's tuples."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def _check_choice(name, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


#: the recipe's fields that are numbers, and its switches (the others are checked by kind below)
NUMBER_FIELDS = ("dropout", "object_size", "w0", "sigma", "dice", "lr", "momentum", "weight_decay", "elastic_sigma",
                 "noise")
SWITCH_FIELDS = ("clip", "flips", "grey_values", "imaging")


def _check_int(name, value, low) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


RECIPES = {
    # chosen by the experiments of benchmarks/results/2026-11-26-recipe-experiments.md (real nuclei of
    # about 24 px and synthetic ones of about 21 px: object_size keeps other sizes near what was tuned)
    "default": Recipe(name="default", depth=3, base_channels=16, dropout=0.0, tile_size=140, batch_size=4,
                      tiles_per_epoch=200, epochs=30, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                      lr_schedule="cosine", warmup_steps=50, flips=True, rotation="90", elastic_sigma=7.0,
                      grey_values=True, object_size=24.0,
                      # no imaging conditions: blur, uneven light and noise (--imaging) make a model robust to
                      # another microscope's images but cost 0.2-0.7 points of IoU on images like the training
                      # ones (session 24's cross-validation); an option for training and target images that differ
                      imaging=False,
                      # half the paper's border weight: foreground IoU +0.6 to +0.9 points on real nuclei,
                      # object F1 unchanged within the noise (session 19's cross-validation)
                      w0=5.0,
                      # a soft Dice term beside the cross-entropy (as nnU-Net's): foreground IoU +0.7 points
                      # in 12 of 12 cross-validation runs on real nuclei, object F1 +1 point (session 20)
                      dice=1.0),
    "paper": Recipe(name="paper", depth=5, base_channels=64, dropout=0.5, tile_size=None, batch_size=1,
                    tiles_per_epoch=None, epochs=50, optimizer="sgd", lr=0.01, momentum=0.99, weight_decay=0.0,
                    lr_schedule="constant", warmup_steps=0, flips=True, rotation="any", elastic_sigma=10.0,
                    grey_values=True),
}


#: what a run trained with whose saved recipe predates a field: never resampled, cross-entropy alone, the
#: first grey values, no imaging conditions, no zoom (resuming it keeps these, and a flag asking for another value
#: is refused)
UNRECORDED_VALUES = {"object_size": 0.0, "dice": 0.0, "gamma": (0.7, 1.4), "imaging": False, "zoom": (1.0, 1.0),
                     "custom_augmentation": "", "custom_loss": ""}


def get_recipe(recipe: "str | Recipe") -> Recipe:
    """A recipe by name ("default", "paper"), or ``recipe`` itself."""
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {tuple(RECIPES)} or a Recipe, got {recipe!r}")
    return RECIPES[recipe]
