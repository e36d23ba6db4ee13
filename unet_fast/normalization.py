"""How raw pixels become network inputs: one documented rule (``Normalization``), stored with a model
(``save_model``), so training and inference turn raw uint8/uint16/float pixels into the same inputs."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np

NORMALIZATION_MODES = ("percentile", "fixed", "dtype", "none")
NONFINITE_POLICIES = ("error", "zero")


class NonFiniteInputError(ValueError):
    """An image holds NaN or infinite pixels, and the normalisation was not told what to do with them."""


@dataclass(frozen=True)
class Normalization:
    """How raw pixels become network inputs; stored with a model (``to_dict``/``from_dict``).

    mode:
      - "percentile" (default): ``(x - P_low) / (P_high - P_low)`` where P_low, P_high are the
        ``low``-th and ``high``-th percentiles (0..100) of the whole image (all slices of a stack),
        per channel when ``per_channel``. For images above ``sample_pixels`` the percentiles are
        taken from a regular strided subsample, so huge images need no second full copy in memory.
        Where the two percentiles (nearly) coincide (a flat image with a few bright pixels), the range of
        the sampled pixels takes their place (1 for a flat image): the bright pixels come out near 1, not
        at 10^6, which no network was trained on and which overflows float16.
      - "fixed": ``(x - low) / (high - low)`` with fixed values (e.g. low=0, high=4095 for 12 bit).
      - "dtype": integers divided by their type's maximum (uint8 / 255, uint16 / 65535); floats as is.
      - "none": cast to float32 unchanged.
    ``clip`` clips the result to [0, 1] (not for "none").
    ``nonfinite``: what NaN and infinite pixels of a floating-point image get. "error" (default):
    ``NonFiniteInputError``, because one such pixel silently spoils the percentiles, and so every
    label, of its image. "zero" (opt in): the statistics come from the finite pixels only, and
    non-finite pixels become 0 in the normalised input (the level of the low percentile, usually
    background). Integer images cannot hold them.
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    per_channel: bool = True
    clip: bool = False
    sample_pixels: int = 4_000_000
    nonfinite: str = "error"

    def __post_init__(self):
        if self.mode not in NORMALIZATION_MODES:
            raise ValueError(f"Normalization mode must be one of {NORMALIZATION_MODES}, got {self.mode!r}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"Normalization {name} must be a finite number, got {value!r}")
        for name in ("per_channel", "clip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Normalization {name} must be True or False, got {getattr(self, name)!r}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"Normalization nonfinite must be one of {NONFINITE_POLICIES}, got {self.nonfinite!r}")
        if self.mode in ("percentile", "fixed") and not float(self.high) > float(self.low):
            raise ValueError(f"Normalization needs high > low, got low={self.low!r}, high={self.high!r}")
        if self.mode == "fixed":      # inputs are (x - low) / (high - low) in float32: both must be float32 numbers
            float32 = np.finfo(np.float32)
            with np.errstate(over="ignore"):
                low, span = np.float32(self.low), np.float32(float(self.high) - float(self.low))
            if not (np.isfinite(low) and np.isfinite(span) and span >= float32.tiny):
                raise ValueError(f"Normalization high - low and low must be within float32's range (inputs are "
                                 f"computed in float32: {float32.tiny:.3g} <= high - low, |low| <= "
                                 f"{float32.max:.3g}), got low={self.low!r}, high={self.high!r}")
        if self.mode == "percentile" and not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")
        if not isinstance(self.sample_pixels, int) or isinstance(self.sample_pixels, bool) or self.sample_pixels < 1:
            raise ValueError(f"sample_pixels must be a positive integer, got {self.sample_pixels!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["nonfinite"] == "error":    # the default: files stay readable by versions without the field
            del data["nonfinite"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        if not isinstance(data, dict):
            raise TypeError(f"Normalization.from_dict needs a dict, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown Normalization fields {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def statistics(self, image, channel_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) per channel (1-D, length C, or 1 without per-channel statistics).

        ``image`` may be lazy (zarr, memmap): the last two axes are Y, X and are read in bands.
        """
        channels = image.shape[channel_axis] if channel_axis is not None and self.per_channel else 1
        if self.mode == "none":
            return np.zeros(channels), np.ones(channels)
        if self.mode == "fixed":
            return np.full(channels, float(self.low)), np.full(channels, float(self.high) - float(self.low))
        if self.mode == "dtype":
            dtype = np.dtype(image.dtype)
            top = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
            return np.zeros(channels), np.full(channels, top)
        sample = _subsample(image, channel_axis if self.per_channel else None, self.sample_pixels)
        finite = np.isfinite(sample)
        if finite.all():  # one partition for both percentiles: the same values as nanpercentile's, a third faster
            lo, hi = np.percentile(sample, [self.low, self.high], axis=1)
        else:
            self._refuse_nonfinite(sample, finite, f"{finite.size - np.count_nonzero(finite)} of the pixels "
                                                   f"sampled for the normalisation statistics")
            sample = np.where(finite, sample, np.nan)
            if not finite.any(axis=1).all():
                raise NonFiniteInputError("image (or one of its channels) holds no finite pixel at all")
            lo = np.nanpercentile(sample, self.low, axis=1)
            hi = np.nanpercentile(sample, self.high, axis=1)
        # a spread below what the arithmetic of apply resolves at this level counts as none
        spread, tiny = hi - lo, (1e-12 if _wide(image.dtype) else 1e-6) * np.maximum(np.abs(hi), 1.0)
        if (spread < tiny).any():   # the percentiles collapsed: the sample's whole range, else 1
            whole = np.nanmax(sample, axis=1) - np.nanmin(sample, axis=1)
            spread = np.where(spread >= tiny, spread, np.where(whole >= tiny, whole, 1.0))
        return lo, spread

    def _refuse_nonfinite(self, values: np.ndarray, finite: np.ndarray, where: str) -> None:
        if self.nonfinite == "error":
            raise NonFiniteInputError(
                f"image holds NaN or infinite pixel values ({where}), which would silently spoil "
                f"the prediction; repair the image, or opt in to setting them to 0: "
                f"Normalization(nonfinite='zero') (for unet-fast segment and evaluate: --nonfinite zero)")

    def apply(self, x: np.ndarray, offset: np.ndarray, scale: np.ndarray,
              channel_axis: int | None = None) -> np.ndarray:
        """Normalise an in-memory block with statistics from ``statistics`` (float32 result). Pixel types wider
        than float32's 24-bit mantissa (float64, 32- and 64-bit integers) are normalised in float64 first: in
        float32, 1e9 + x is rounded to 64s before the offset is taken off, and float64 values past float32's
        range would become infinite."""
        x = np.asarray(x)
        floating = x.dtype.kind in "fc"
        work = np.float64 if _wide(x.dtype) and self.mode != "none" else np.float32
        x = x.astype(work, copy=False)
        finite = np.isfinite(x) if floating else None   # integers have no NaN: no extra pass for them
        if finite is not None and not finite.all():
            self._refuse_nonfinite(x, finite, "found in a block being normalised")
        else:
            finite = None
        if self.mode == "none":
            out = x
        else:
            shape = [1] * x.ndim
            if channel_axis is not None and len(offset) > 1:
                shape[channel_axis] = len(offset)
            out = ((x - offset.astype(work).reshape(shape)) / scale.astype(work).reshape(shape)).astype(np.float32)
            if self.clip:
                np.clip(out, 0.0, 1.0, out=out)
        if finite is not None:      # nonfinite="zero"
            out = np.where(finite, out, np.float32(0))
        return out

    def __call__(self, image, channel_axis: int | None = None) -> np.ndarray:
        """Normalise a whole image (in memory) by this rule."""
        offset, scale = self.statistics(image, channel_axis)
        return self.apply(np.asarray(image), offset, scale, channel_axis)


def _wide(dtype) -> bool:
    """Whether pixels of ``dtype`` hold more than float32's 24-bit mantissa (float64, 32- and 64-bit integers):
    ``Normalization.apply`` normalises those in float64."""
    dtype = np.dtype(dtype)
    return dtype.kind in "uif" and dtype.itemsize >= 4 and dtype != np.float32


def _subsample(image, channel_axis: int | None, max_pixels: int) -> np.ndarray:
    """(C, M) float64 sample of the image, read in row bands with a regular stride."""
    shape = tuple(image.shape)
    if len(shape) < 2:
        raise ValueError(f"image must have at least 2 dimensions (..., H, W), got shape {shape}")
    channel_axis = None if channel_axis is None else channel_axis % len(shape)
    if channel_axis is not None and channel_axis >= len(shape) - 2:
        raise ValueError(f"channel_axis {channel_axis} must come before the Y, X axes of shape {shape}")
    stride = max(1, math.ceil(math.sqrt(math.prod(shape) / max_pixels)))
    height = shape[-2]
    band = max(stride, (4096 // stride) * stride)
    parts = []
    for y0 in range(0, height, band):
        block = np.asarray(image[..., y0:min(y0 + band, height):stride, ::stride], dtype=np.float64)
        if channel_axis is None:
            parts.append(block.reshape(1, -1))
        else:
            parts.append(np.moveaxis(block, channel_axis, 0).reshape(block.shape[channel_axis], -1))
    return np.concatenate(parts, axis=1)
