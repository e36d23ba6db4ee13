"""unet_fast.augment against independent numpy/scipy implementations (and elasticdeform if installed).

The independent reference: the per-pixel field is scipy.ndimage.map_coordinates(order=3,
mode="mirror") on the lattice (an interpolating cubic B-spline, the same spline elasticdeform uses);
labels and weight maps are scipy map_coordinates order 0 / 1 (mode="mirror") at those points; the
image is compared with a numpy Keys cubic convolution (a = -0.75, what "bicubic" means in
grid_sample), since scipy's order 3 is a B-spline, a different interpolant.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import scipy.ndimage as ndi
import torch

from tolerances import (ELASTIC_FP32_LABEL_MISMATCH, GPU_LABEL_MISMATCH, GPU_RESAMPLING, KEYS_VS_BSPLINE, SAMPLE_STD,
                        assert_close)
from unet_fast import augment


def scipy_points(lattice: np.ndarray, h: int, w: int):
    """Sampling points p + d(p) with d from map_coordinates on the lattice (corners on corners)."""
    gy, gx = lattice.shape[1:]
    ly = np.linspace(0, gy - 1, h) if h > 1 else np.zeros(1)
    lx = np.linspace(0, gx - 1, w) if w > 1 else np.zeros(1)
    where = np.meshgrid(ly, lx, indexing="ij")
    dy, dx = (ndi.map_coordinates(lattice[c], where, order=3, mode="mirror") for c in range(2))
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return ys + dy, xs + dx


def keys(t, a=-0.75):
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def mirror(i, n):
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i > n - 1, period - i, i)


def keys_resample(image: np.ndarray, py, px):
    """Bicubic (Keys) resampling of a 2-D image at points (py, px), mirrored borders."""
    h, w = image.shape
    fy, fx = np.floor(py).astype(int), np.floor(px).astype(int)
    out = np.zeros(py.shape)
    for i in range(-1, 3):
        for j in range(-1, 3):
            weight = keys(py - (fy + i)) * keys(px - (fx + j))
            out += weight * image[mirror(fy + i, h), mirror(fx + j, w)]
    return out


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (4, 5)])
@pytest.mark.parametrize("size", [(17, 23), (32, 9), (1, 6)])
def test_field_matches_scipy_cubic_spline(grid, size):
    lattice = np.random.default_rng(0).normal(0, 5, (2, *grid))
    field = augment.displacement_field(torch.from_numpy(lattice)[None], size)[0]
    py, px = scipy_points(lattice, *size)
    ys, xs = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    assert_close(field, torch.from_numpy(np.stack((py - ys, px - xs))))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [(23, 31), (16, 16)])
def test_elastic_matches_independent_resampling(dtype, size):
    rng = np.random.default_rng(1)
    h, w = size
    image = rng.random((h, w))
    weights = rng.random((h, w)) + 1
    labels = rng.integers(0, 6, (h, w))
    lattice = rng.normal(0, 8, (2, 3, 3))  # large enough to reach over the borders
    out, wout, lout = augment.elastic_deform(
        torch.from_numpy(image).to(dtype), torch.from_numpy(weights).to(dtype), torch.from_numpy(labels),
        displacement=torch.from_numpy(lattice).to(dtype))
    py, px = scipy_points(lattice, h, w)
    assert_close(out, torch.from_numpy(keys_resample(image, py, px)), dtype=dtype)
    assert_close(wout, torch.from_numpy(ndi.map_coordinates(weights, [py, px], order=1, mode="mirror")), dtype=dtype)
    expected_labels = torch.from_numpy(ndi.map_coordinates(labels, [py, px], order=0, mode="mirror"))
    mismatch = (lout != expected_labels).float().mean().item()
    assert lout.dtype == torch.int64
    # float32 sampling points may round a pixel to the other side of a half-way point, never more
    assert mismatch == 0 if dtype == torch.float64 else mismatch < ELASTIC_FP32_LABEL_MISMATCH


def test_elastic_matches_elasticdeform():
    try:  # elasticdeform 0.5.1 wheels are built for numpy 1: under numpy 2 the import raises ImportError
        import elasticdeform
    except ImportError as error:
        pytest.skip(f"elasticdeform does not import: {error}")
    rng = np.random.default_rng(2)
    image = ndi.gaussian_filter(rng.random((45, 38)), 3)  # smooth: B-spline and Keys cubic agree closely
    labels = rng.integers(0, 4, (45, 38))
    lattice = rng.normal(0, 6, (2, 4, 3))
    linear, nearest, spline = elasticdeform.deform_grid([image, labels, image], lattice, order=[1, 0, 3],
                                                        mode="mirror")
    out, weights, lab = augment.elastic_deform(torch.from_numpy(image), torch.from_numpy(image),
                                               torch.from_numpy(labels), displacement=torch.from_numpy(lattice))
    assert_close(weights, torch.from_numpy(linear))          # same field and same linear resampling
    assert torch.equal(lab, torch.from_numpy(nearest))
    # order 3 there is a B-spline, here Keys cubic: different interpolants, 1 % of the range apart at most
    value_range = image.max() - image.min()
    assert np.abs(out.numpy() - spline).max() < KEYS_VS_BSPLINE * value_range


def test_labels_never_gain_values_and_keep_dtype():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(3, 1, 40, 33)
    labels = torch.randint(0, 200, (3, 40, 33), dtype=torch.uint8)
    mask = labels > 100
    big = torch.randint(2**40, 2**40 + 5, (3, 1, 40, 33))  # beyond float32's exact integers
    _, lab, msk, b = augment.elastic_deform(image, labels, mask, big, sigma=15.0, generator=gen)
    assert (lab.dtype, msk.dtype, b.dtype) == (torch.uint8, torch.bool, torch.int64)
    for before, after in ((labels, lab), (big, b)):
        assert set(after.unique().tolist()) <= set(before.unique().tolist())


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 24), w=st.integers(1, 24), grid=st.integers(2, 5), sigma=st.floats(0, 40),
       seed=st.integers(0, 2**31 - 1))
def test_labels_keep_their_values_for_any_size(h, w, grid, sigma, seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 7, (2, h, w), generator=gen)
    out, lab = augment.elastic_deform(torch.rand(2, 1, h, w), labels, grid=grid, sigma=sigma, generator=gen)
    assert out.shape == (2, 1, h, w) and torch.isfinite(out).all()
    assert set(lab.unique().tolist()) <= set(labels.unique().tolist())


def test_identity_lattice_returns_the_input():
    image = torch.randn(2, 3, 17, 19, dtype=torch.float64)
    labels = torch.randint(0, 9, (2, 17, 19))
    out, lab = augment.elastic_deform(image, labels, displacement=torch.zeros(2, 3, 3, dtype=torch.float64))
    assert torch.equal(lab, labels)
    assert_close(out, image)  # float64: exact up to rounding of the sampling points (1e-10)
    out32 = augment.elastic_deform(image.float(), displacement=torch.zeros(2, 3, 3))
    assert_close(out32, image.float())


def test_batch_equals_per_sample_and_noncontiguous():
    gen = torch.Generator().manual_seed(4)
    lattice = augment.random_displacement(3, grid=3, sigma=6.0, generator=gen)
    image = torch.rand(3, 2, 29, 21)
    weights = torch.rand(3, 21, 29).transpose(1, 2)        # non-contiguous
    labels = torch.randint(0, 5, (3, 1, 21, 29)).transpose(2, 3)
    out, w, lab = augment.elastic_deform(image, weights, labels, displacement=lattice)
    assert w.shape == (3, 29, 21) and lab.shape == (3, 1, 29, 21)
    for i in range(3):
        one = augment.elastic_deform(image[i], weights[i].contiguous(), labels[i].contiguous(),
                                     displacement=lattice[i])
        assert_close(out[i], one[0])
        assert_close(w[i], one[1])
        assert torch.equal(lab[i], one[2])


def test_deterministic_with_generator():
    image, labels = torch.rand(2, 1, 24, 24), torch.randint(0, 3, (2, 24, 24))
    a = augment.elastic_deform(image, labels, generator=torch.Generator().manual_seed(5))
    b = augment.elastic_deform(image, labels, generator=torch.Generator().manual_seed(5))
    c = augment.elastic_deform(image, labels, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0][0], a[0][1])  # one field per sample


def test_shift_mirrors_without_repeating_the_edge():
    image = torch.arange(6, dtype=torch.float64).repeat(3, 1)
    out = augment.shift(image, offset=(0, 2))
    assert_close(out[0], torch.tensor([2.0, 1, 0, 1, 2, 3], dtype=torch.float64))
    labels = torch.arange(6).repeat(3, 1)
    _, lab = augment.shift(image, labels, offset=(0, -1))
    assert lab[0].tolist() == [1, 2, 3, 4, 5, 4]


def test_rotate_quarter_turns():
    image = torch.rand(2, 1, 9, 9, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 9, 9))
    out, lab = augment.rotate(image, labels, angle=90)
    assert_close(out, torch.rot90(image, 1, (2, 3)))
    assert torch.equal(lab, torch.rot90(labels, 1, (1, 2)))


def test_rotate_and_shift_non_square_match_independent_points():
    image = torch.rand(9, 14, dtype=torch.float64)
    cy, cx, t = 4.0, 6.5, np.deg2rad(30.0)
    ys, xs = np.meshgrid(np.arange(9.0), np.arange(14.0), indexing="ij")
    py = cy + np.cos(t) * (ys - cy) + np.sin(t) * (xs - cx)
    px = cx - np.sin(t) * (ys - cy) + np.cos(t) * (xs - cx)
    assert_close(augment.rotate(image, angle=30.0), torch.from_numpy(keys_resample(image.numpy(), py, px)))
    shifted = augment.shift(image, offset=(1.25, -2.5))
    assert_close(shifted, torch.from_numpy(keys_resample(image.numpy(), ys - 1.25, xs + 2.5)))


def test_zoom_matches_independent_points_per_sample_and_keeps_labels():
    image = torch.rand(2, 1, 11, 16, dtype=torch.float64)
    cy, cx = 5.0, 7.5
    ys, xs = np.meshgrid(np.arange(11.0), np.arange(16.0), indexing="ij")
    out = augment.zoom(image, factor=[1.3, 0.8])
    for i, f in enumerate((1.3, 0.8)):     # output p takes the input at c + (p - c) / f, borders mirrored
        expected = keys_resample(image[i, 0].numpy(), cy + (ys - cy) / f, cx + (xs - cx) / f)
        assert_close(out[i, 0], torch.from_numpy(expected))
    labels = torch.zeros(1, 41, 41, dtype=torch.int64)
    labels[0, 15:26, 15:26] = 7                      # an 11 px square
    _, grown = augment.zoom(torch.rand(1, 1, 41, 41), labels, factor=2.0)
    assert set(grown.unique().tolist()) == {0, 7} and grown.dtype == torch.int64
    rows = grown[0].eq(7).any(1).nonzero().flatten()
    assert rows[-1] - rows[0] + 1 in (21, 22, 23) and grown[0, 20, 20] == 7      # about 22 px, still centred
    assert_close(augment.zoom(image, factor=1.0), image)
    strided = image.transpose(2, 3).contiguous().transpose(2, 3)
    assert_close(augment.zoom(strided, factor=1.3), augment.zoom(image, factor=1.3))
    for factor in (0, -1.0, float("nan"), [1.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match="factor"):
            augment.zoom(image, factor=factor)
    # in the elastic deformation's resampling: the zoomed image deformed, in one resampling
    lattice = augment.random_displacement(2, sigma=3.0, generator=torch.Generator().manual_seed(2)).double()
    deformed = augment.elastic_deform(image, displacement=lattice)
    ys2, xs2 = np.meshgrid(np.arange(11.0), np.arange(16.0), indexing="ij")
    field = augment.displacement_field(lattice, (11, 16)).numpy()
    both = augment.elastic_deform(image, displacement=lattice, zoom=[1.3, 0.8])
    for i, f in enumerate((1.3, 0.8)):
        expected = keys_resample(image[i, 0].numpy(), cy + (ys2 + field[i, 0] - cy) / f,
                                 cx + (xs2 + field[i, 1] - cx) / f)
        assert_close(both[i, 0], torch.from_numpy(expected))
    assert not torch.allclose(both, deformed)
    with pytest.raises(ValueError, match="zoom"):
        augment.elastic_deform(image, displacement=lattice, zoom=0)


def test_random_elastic_deform_zooms_in_its_resampling_and_draws_nothing_more_without_zoom():
    image, labels = torch.rand(3, 1, 21, 26, dtype=torch.float64), torch.randint(0, 9, (3, 21, 26))
    gen, again = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    out, lab = augment.RandomElasticDeform(sigma=4.0, zoom=(1.5, 1.5))(image, labels, generator=gen)
    lattice = augment.random_displacement(3, sigma=4.0, generator=again)
    expected = augment.elastic_deform(image, labels, displacement=lattice, zoom=1.5)
    assert_close(out, expected[0]) and torch.equal(lab, expected[1])
    assert not torch.allclose(out, augment.elastic_deform(image, displacement=lattice))
    # without a zoom it is the paper's deformation as before: the same output and random numbers used
    gen.manual_seed(9), again.manual_seed(9)
    plain = augment.RandomElasticDeform(sigma=4.0)(image, labels, generator=gen)
    before = augment.elastic_deform(image, labels, sigma=4.0, generator=again)
    assert torch.equal(plain[0], before[0]) and torch.equal(plain[1], before[1])
    assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=again))


def test_random_zoom_draws_log_uniformly_per_sample_and_checks_its_range(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    transform = augment.RandomZoom((0.5, 2.0))
    drawn = []
    with monkeypatch.context() as patch:
        patch.setattr(augment, "zoom", lambda image, *targets, factor, target_modes=None: drawn.append(factor) or image)
        for _ in range(200):
            transform(torch.rand(5, 1, 8, 8), generator=gen)
    logs = torch.log(torch.cat(drawn))
    assert logs.min() >= math.log(0.5) and logs.max() <= math.log(2.0)
    assert abs(float(logs.mean())) < 0.05 and len(torch.cat(drawn).unique()) == 1000   # symmetric in log; per sample
    gen.manual_seed(4)
    a = transform(torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(0)), generator=gen)
    gen.manual_seed(4)
    b = transform(torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(0)), generator=gen)
    assert torch.equal(a, b)
    for factors in (1.2, (2.0, 0.5), (0, 1), (1, math.inf), (float("nan"), 1)):
        with pytest.raises(ValueError, match="factors"):
            augment.RandomZoom(factors)
        with pytest.raises(ValueError, match="zoom"):
            augment.RandomElasticDeform(zoom=factors)


def test_label_gather_fallback_agrees_with_grid_sample_path():
    gen = torch.Generator().manual_seed(10)
    image, labels = torch.rand(2, 1, 31, 27, dtype=torch.float64), torch.randint(0, 50, (2, 31, 27))
    small = augment.elastic_deform(image, labels, sigma=8.0, generator=gen)[1]
    gen.manual_seed(10)
    big = augment.elastic_deform(image, labels + 2**60, sigma=8.0, generator=gen)[1]  # gather path
    assert torch.equal(big - 2**60, small)


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
def test_unsigned_wide_labels_follow_every_transform(dtype):
    """uint16 instance masks (TIFFs) as torch tensors: torch has no flip or aminmax for uint16/32/64, so every
    geometric transform raised NotImplementedError. Values above the signed range come back unchanged."""
    signed = {"uint16": torch.int16, "uint32": torch.int32, "uint64": torch.int64}[dtype]
    dtype = getattr(torch, dtype)
    image = torch.rand(2, 1, 16, 16)
    small = torch.randint(0, 40, (2, 16, 16))
    lowest = torch.iinfo(signed).min
    wide = (small + lowest).to(signed).view(dtype)     # 2**15 (2**31, 2**63) + small: beyond the signed type
    for transform in (augment.RandomFlip(p=0.5), augment.RandomFlip(p=1.0), augment.RandomRot90(),
                      augment.RandomRotation(), augment.RandomElasticDeform(sigma=6.0), augment.RandomShift(2.5),
                      augment.RandomZoom()):
        _, expected = transform(image, small, generator=torch.Generator().manual_seed(5))
        _, got = transform(image, wide, generator=torch.Generator().manual_seed(5))
        assert got.dtype == dtype and got.shape == wide.shape, transform
        assert torch.equal(got.view(signed).to(torch.int64) - lowest, expected), transform


def test_flip_per_sample():
    image = torch.rand(2, 1, 5, 7)
    labels = torch.randint(0, 3, (2, 5, 7))
    out, lab = augment.flip(image, labels, horizontal=[True, False], vertical=True)
    assert torch.equal(out[0], image[0].flip(1, 2)) and torch.equal(out[1], image[1].flip(1))
    assert torch.equal(lab[0], labels[0].flip(0, 1)) and torch.equal(lab[1], labels[1].flip(0))
    as_bytes = torch.randint(0, 255, (5, 7), dtype=torch.uint8)  # no interpolation: any dtype
    assert torch.equal(augment.flip(as_bytes, horizontal=True), as_bytes.flip(1))


def test_half_precision_and_noncontiguous_image():
    gen = torch.Generator().manual_seed(11)
    lattice = augment.random_displacement(1, sigma=5.0, generator=gen)
    image = torch.rand(1, 1, 33, 40)
    expected = augment.elastic_deform(image, displacement=lattice)
    bf16 = augment.elastic_deform(image.bfloat16(), displacement=lattice)
    assert bf16.dtype == torch.bfloat16
    assert_close(bf16, expected, dtype=torch.bfloat16)
    transposed = augment.elastic_deform(image.transpose(2, 3).contiguous().transpose(2, 3), displacement=lattice)
    assert_close(transposed, expected)


def test_grey_values():
    image = torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64)
    assert_close(augment.adjust_grey_values(image, gamma=2.0), torch.tensor([[0.0, 0.0625, 1.0]], dtype=torch.float64))
    mean = image.mean()
    assert_close(augment.adjust_grey_values(image, contrast=0.5, brightness=0.1), mean + 0.5 * (image - mean) + 0.1)
    noisy = augment.add_noise(torch.zeros(1, 1, 64, 64), std=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(noisy.std().item() - 0.5) < SAMPLE_STD * 0.5


@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 9, 30), (12, 7)])
def test_gaussian_blur_matches_scipy_per_sample(shape):
    """Each sample with its own sigma (0: untouched), edges mirrored as scipy's mode="mirror"; odd sizes, a
    channels_last batch."""
    image = torch.rand(shape, dtype=torch.float64)
    if image.ndim == 4:
        image = image.contiguous(memory_format=torch.channels_last)
        sigmas = [1.3, 0.0]
    else:
        sigmas = [0.7]
    got = augment.gaussian_blur(image, sigmas if len(sigmas) > 1 else sigmas[0])
    assert got.shape == image.shape and got.dtype == image.dtype
    samples = image.numpy().reshape(-1, *shape[-3 if image.ndim > 2 else -2:]) if image.ndim == 4 else [image.numpy()]
    for sample, sigma, out in zip(samples, sigmas, got.reshape(len(sigmas), *samples[0].shape).numpy()):
        sigma_axes = (0, sigma, sigma) if sample.ndim == 3 else sigma
        np.testing.assert_allclose(out, ndi.gaussian_filter(sample, sigma_axes, mode="mirror", truncate=3.0) if sigma
                                   else sample, rtol=1e-12, atol=1e-12)
    tiny = torch.rand(1, 1, 2, 3)
    assert augment.gaussian_blur(tiny, 5.0).shape == tiny.shape  # a radius of 1 at most: still defined
    row = torch.rand(1, 1, 1, 15, dtype=torch.float64)          # one pixel high: blurred along the row only
    np.testing.assert_allclose(augment.gaussian_blur(row, 1.0)[0, 0, 0].numpy(),
                               ndi.gaussian_filter1d(row[0, 0, 0].numpy(), 1.0, mode="mirror", truncate=3.0),
                               rtol=1e-12, atol=1e-12)


def test_illumination_is_a_ramp_of_the_amplitude_in_the_direction():
    flat = torch.zeros(2, 1, 5, 9)
    lit = augment.illuminate(flat, [0.4, 1.0], [0.0, np.pi / 2])
    assert_close(lit[0, 0, 2], torch.linspace(-0.2, 0.2, 9))              # along the columns, to the right
    assert_close(lit[0, 0, :, 4], torch.zeros(5))
    assert_close(lit[1, 0, :, 0], torch.linspace(-0.5, 0.5, 5))           # down the rows
    image = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    assert_close(augment.illuminate(image, 0.3, 1.0) - image, augment.illuminate(torch.zeros_like(image), 0.3, 1.0))


def test_random_imaging_changes_only_the_chosen_samples_and_never_the_targets():
    image, labels = torch.rand(64, 1, 24, 20), torch.randint(0, 3, (64, 24, 20))
    generator = torch.Generator().manual_seed(3)
    out, kept = augment.RandomImaging(p=0.2)(image, labels, generator=generator)
    assert torch.equal(kept, labels)
    changed = (out != image).flatten(1).any(1)
    share = changed.double().mean().item()       # chosen for any of three changes: 1 - 0.8^3 = 0.49
    assert 0.3 < share < 0.7, share
    assert torch.equal(augment.RandomImaging(p=0.0)(image, generator=generator), image)
    again = augment.RandomImaging(p=0.2)(image, labels, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again[0], out)           # the generator decides everything
    single = augment.RandomImaging(p=1.0)(image[0, 0], generator=generator)
    assert single.shape == (24, 20) and not torch.equal(single, image[0, 0])
    noisy = augment.RandomImaging(p=1.0, blur=(0.0, 0.0), illumination=0.0, noise=0.3)(
        torch.zeros(400, 1, 32, 32), generator=generator)
    stds = noisy.flatten(1).std(1)              # each sample its own std, drawn from 0 to 0.3
    assert stds.min() < 0.03 and 0.27 < stds.max() < 0.32 and abs(stds.mean().item() - 0.15) < 0.02


def test_random_imaging_refuses_bad_settings():
    for kwargs, message in (({"p": 1.5}, "p must be a probability"), ({"blur": (2.0, 1.0)}, "blur must be"),
                            ({"illumination": -1}, "illumination must be"), ({"noise": float("inf")}, "noise must be"),
                            ({"blur": -0.5}, "blur must be"), ({"blur": 1.0}, r"blur must be a \(low, high\) range")):
        with pytest.raises(ValueError, match=message):
            augment.RandomImaging(**kwargs)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        augment.gaussian_blur(torch.rand(1, 1, 8, 8), -1.0)
    with pytest.raises(ValueError, match="sigma must be a finite number or 2 finite numbers"):
        augment.gaussian_blur(torch.rand(2, 1, 8, 8), [1.0, 2.0, 3.0])


def test_compose_is_deterministic_and_keeps_targets():
    transform = augment.Compose([augment.RandomFlip(), augment.RandomRotation(20), augment.RandomShift(3),
                                 augment.RandomElasticDeform(sigma=5), augment.RandomGreyValue(),
                                 augment.RandomImaging(p=0.5), augment.RandomNoise(0.01)])
    image, labels = torch.rand(2, 1, 20, 22), torch.randint(0, 4, (2, 20, 22))
    a = transform(image, labels, generator=torch.Generator().manual_seed(7))
    b = transform(image, labels, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].dtype == torch.int64 and set(a[1].unique().tolist()) <= set(labels.unique().tolist())
    assert transform(image[0], generator=torch.Generator().manual_seed(7)).shape == image[0].shape


def test_bad_inputs_raise_clear_errors():
    image = torch.rand(1, 1, 8, 8)
    with pytest.raises(TypeError, match="image must be a torch.Tensor"):
        augment.elastic_deform(np.zeros((8, 8)))
    with pytest.raises(TypeError, match="floating-point"):
        augment.elastic_deform(torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets\[0\] must be"):
        augment.elastic_deform(image, torch.zeros(1, 7, 8))
    with pytest.raises(ValueError, match="integer label maps"):
        augment.elastic_deform(image, torch.zeros(1, 8, 8, dtype=torch.long), target_modes=["cubic"])
    with pytest.raises(ValueError, match="displacement must be"):
        augment.elastic_deform(image, displacement=torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="grid must be >= 2"):
        augment.elastic_deform(image, grid=1)
    with pytest.raises(ValueError, match="sigma"):
        augment.RandomElasticDeform(sigma=-1)
    with pytest.raises(TypeError, match="generator"):
        augment.elastic_deform(image, generator=0)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    image, labels = torch.rand(4, 1, 64, 48), torch.randint(0, 5, (4, 64, 48))
    cpu = augment.elastic_deform(image, labels, generator=torch.Generator().manual_seed(9))
    gpu = augment.elastic_deform(image.cuda(), labels.cuda(), generator=torch.Generator().manual_seed(9))
    assert_close(gpu[0].cpu(), cpu[0], **GPU_RESAMPLING)
    assert (gpu[1].cpu() != cpu[1]).float().mean() < GPU_LABEL_MISMATCH
    imaging = augment.RandomImaging(p=1.0, noise=0.0)     # blur and light: the same parameters from a CPU generator
    cpu = imaging(image, labels, generator=torch.Generator().manual_seed(9))
    gpu = imaging(image.cuda(), labels.cuda(), generator=torch.Generator().manual_seed(9))
    assert_close(gpu[0].cpu(), cpu[0], **GPU_RESAMPLING)
    assert torch.equal(gpu[1].cpu(), labels)
