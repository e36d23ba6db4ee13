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
