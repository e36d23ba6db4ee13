"""unet_fast.normalization: the rule that turns raw pixels into network inputs."""
import numpy as np
import pytest

from unet_fast.normalization import Normalization
from tolerances import REORDERED_FP32, SUBSAMPLED_PERCENTILE


def test_percentile_normalization_maps_percentiles_to_0_and_1():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4096, (2, 64, 80)).astype(np.uint16)
    image[1] //= 16
    norm = Normalization(mode="percentile", low=1.0, high=99.0)
    out = norm(image, channel_axis=0)
    assert out.dtype == np.float32
    for c in range(2):
        lo, hi = np.percentile(image[c], [1.0, 99.0])
        np.testing.assert_allclose(out[c], (image[c] - lo) / (hi - lo), **REORDERED_FP32)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_statistics_are_nanpercentiles_of_the_sample_exactly(dtype):
    """Both percentiles come from one np.percentile call where the sample is finite: bit for bit what
    np.nanpercentile (the path for images with NaN, under nonfinite='zero') gives, per channel."""
    rng = np.random.default_rng(5)
    image = (rng.random((3, 57, 91)) * 4000).astype(dtype)
    norm = Normalization(low=0.7, high=99.3, sample_pixels=10 ** 9)
    lo, scale = norm.statistics(image, channel_axis=0)
    sample = image.reshape(3, -1).astype(np.float64)
    want_lo, want_hi = np.nanpercentile(sample, 0.7, axis=1), np.nanpercentile(sample, 99.3, axis=1)
    assert np.array_equal(lo, want_lo) and np.array_equal(scale, want_hi - want_lo)
    if dtype != np.uint16:
        image[0, 3, 4] = np.nan  # the other path: NaN set aside, the same statistics of the rest
        lo_nan, _ = Normalization(low=0.7, high=99.3, sample_pixels=10 ** 9, nonfinite="zero").statistics(
            image, channel_axis=0)
        rest = image[0].astype(np.float64).ravel()
        assert lo_nan[0] == np.percentile(rest[np.isfinite(rest)], 0.7) and lo_nan[1] == lo[1]


def test_collapsed_percentiles_take_the_range_of_the_pixels_instead():
    """A flat image with a few bright pixels (both percentiles 100): the bright ones came out at about 5e7,
    which float16 cannot hold (a NaN result); now at 1. A flat channel comes out 0, the other channel as before."""
    image = np.full((2, 200, 200), 100, np.uint16)
    image[0, :2, :20] = 5000
    image[1] = np.arange(200 * 200).reshape(200, 200) % 1000
    out = Normalization(low=1.0, high=99.8, per_channel=True)(image, channel_axis=0)
    assert out[0].min() == 0 and out[0].max() == 1 and np.isfinite(out.astype(np.float16)).all()
    lo, hi = np.percentile(image[1], [1.0, 99.8])
    np.testing.assert_allclose(out[1], (image[1] - lo) / (hi - lo), rtol=1e-6, atol=1e-6)
    flat = Normalization()(np.full((30, 30), 7.5, np.float32))
    assert (flat == 0).all()


def test_percentile_statistics_on_a_subsample_are_close():
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, (300, 400)).astype(np.float32)
    exact = Normalization(sample_pixels=10 ** 9).statistics(image)
    sampled = Normalization(sample_pixels=5000).statistics(image)
    np.testing.assert_allclose(sampled[0], exact[0], **SUBSAMPLED_PERCENTILE)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_dtype_and_fixed_normalization(dtype, top):
    image = np.array([[0, 1], [top // 2, top]], dtype=dtype)
    np.testing.assert_allclose(Normalization(mode="dtype")(image), image / top, **REORDERED_FP32)
    fixed = Normalization(mode="fixed", low=1, high=top, clip=True)(image)
    np.testing.assert_allclose(fixed, np.clip((image.astype(np.float64) - 1) / (top - 1), 0, 1), **REORDERED_FP32)


def test_normalization_round_trips_and_validates():
    norm = Normalization(mode="fixed", low=0, high=4095, clip=True)
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError, match="mode"):
        Normalization(mode="zscore")
    with pytest.raises(ValueError, match="high > low"):
        Normalization(mode="fixed", low=5, high=5)
    with pytest.raises(ValueError, match="unknown Normalization fields"):
        Normalization.from_dict({"mode": "none", "gain": 2})


@pytest.mark.parametrize("image", [
    1e9 + np.arange(48 * 40, dtype=np.float64).reshape(48, 40) % 97,          # a large offset, a small spread
    (4_000_000_000 + np.arange(48 * 40) % 97).astype(np.uint32).reshape(48, 40),
    (2 ** 40 + np.arange(48 * 40) % 97).astype(np.int64).reshape(48, 40),
    np.arange(48 * 40, dtype=np.float64).reshape(48, 40) * 1e300,              # past float32's range
], ids=["float64-offset", "uint32-offset", "int64-offset", "float64-huge"])
def test_pixel_types_wider_than_float32_normalise_as_in_float64(image):
    """In float32, 1e9 + x is rounded to 64s before the offset comes off (and the 1e-6 relative spread then
    counted as collapsed: every pixel 0), and values past 3.4e38 became infinite and were refused as "NaN or
    infinite pixels": wider pixel types are normalised in float64, then given as float32."""
    low, high = np.percentile(image.astype(np.float64), [1.0, 99.8])
    got = Normalization()(image)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, (image.astype(np.float64) - low) / (high - low), rtol=0, atol=1e-6)
    if high < np.finfo(np.float32).max:   # (a fixed range must itself be float32's: Normalization refuses others)
        fixed = Normalization(mode="fixed", low=float(low), high=float(high))(image[::-1])    # strided too
        np.testing.assert_allclose(fixed, (image[::-1].astype(np.float64) - low) / (high - low), rtol=0, atol=1e-6)
