import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from tolerances import REORDERED_FP32, WEIGHT_MAP_AGREEMENT
from weight_map_oracle import unet_weight_map_naive

from unet_fast.synthetic import synthetic_nuclei
from unet_fast.weights import separate_touching, unet_weight_map



def assert_matches_naive(labels, **kwargs):
    fast = unet_weight_map(labels, **kwargs)
    naive = unet_weight_map_naive(np.asarray(labels), **kwargs)
    assert fast.dtype == np.float32 and fast.shape == labels.shape
    assert np.abs(fast - naive).max() <= WEIGHT_MAP_AGREEMENT
    return fast


@pytest.fixture(scope="module")
def nuclei():
    _, labels = synthetic_nuclei(2, (160, 176), seed=11, num_objects=45)
    return labels


# --- unet_weight_map: known answers ------------------------------------------------------------

def _weight_map_by_pixel_pairs(labels, w0, sigma, class_weights):
    """The definition, pixel by pixel: d_k = the least Euclidean distance to a pixel of object k (no distance
    transform, no cut-off); the border term on background pixels of images with two or more objects."""
    foreground = labels > 0
    if class_weights == "balanced":
        counts = [int(np.sum(~foreground)), int(np.sum(foreground))]
        present = sum(count > 0 for count in counts)
        w_c = [labels.size / (present * max(count, 1)) for count in counts]
    else:
        w_c = [1.0, 1.0] if class_weights is None else list(class_weights)
    points = {k: np.argwhere(labels == k) for k in np.unique(labels[foreground])}
    out = np.where(foreground, w_c[1], w_c[0]).astype(np.float64)
    for y, x in np.argwhere(~foreground) if len(points) >= 2 else ():
        d1, d2 = sorted(float(np.hypot(*(pixels - (y, x)).T).min()) for pixels in points.values())[:2]
        out[y, x] += w0 * math.exp(-(d1 + d2) ** 2 / (2 * sigma ** 2))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_random_rectangles_match_the_definition_pixel_by_pixel(seed):
    """Against the definition itself (not scipy's distance transform): random small images of rectangles,
    ids sparse, huge and repeated (one object in two pieces), w0 and sigma from small to large."""
    rng = np.random.default_rng(seed)
    for trial in range(25):
        height, width = (int(v) for v in rng.integers(1, 16, 2))
        labels = np.zeros((height, width), np.int64)
        for i in range(int(rng.integers(0, 6))):
            y, x, h, w = rng.integers(0, height), rng.integers(0, width), *rng.integers(1, 4, 2)
            labels[y:y + h, x:x + w] = rng.choice([i + 1, 10 ** 12 + i, 7])
        w0, sigma = float(rng.choice([0.5, 10.0, 1e3])), float(rng.choice([0.3, 5.0, 20.0]))
        class_weights = ["balanced", None, (0.25, 2.0)][trial % 3]
        expected = _weight_map_by_pixel_pairs(labels, w0, sigma, class_weights)
        np.testing.assert_allclose(unet_weight_map(labels, w0, sigma, class_weights), expected,
                                   rtol=1e-5, atol=1e-5 * w0)


def test_known_answer_two_single_pixels():
    labels = np.zeros((1, 9), np.int32)
    labels[0, 0], labels[0, 8] = 1, 2
    weights = unet_weight_map(labels, w0=10.0, sigma=5.0)
    # every background pixel lies between the two: d1 + d2 = 8; balanced: 9 / (2 * 7) and 9 / (2 * 2)
    border = 10.0 * math.exp(-64 / 50)
    expected = np.full((1, 9), 9 / 14 + border, np.float32)
    expected[0, [0, 8]] = 9 / 4
    np.testing.assert_allclose(weights, expected, **REORDERED_FP32)


def test_class_weights_variants():
    labels = np.zeros((4, 5), np.int64)
    labels[1:3, 1:3] = 7  # one object: no border term anywhere
    balanced = unet_weight_map(labels)
    assert balanced.mean() == pytest.approx(1.0)
    assert balanced[1, 1] == pytest.approx(20 / 8) and balanced[0, 0] == pytest.approx(20 / 32)
    np.testing.assert_array_equal(unet_weight_map(labels, class_weights=None), np.ones((4, 5), np.float32))
    fixed = unet_weight_map(labels, class_weights=(0.5, 3.0))
    np.testing.assert_array_equal(fixed, np.where(labels > 0, 3.0, 0.5).astype(np.float32))
    np.testing.assert_array_equal(unet_weight_map(labels, class_weights={0: 0.5, 1: 3.0}), fixed)


@pytest.mark.parametrize("shape", [(0, 5, 5), (2, 0, 5), (0, 5)])
def test_empty_images(shape):
    labels = np.zeros(shape, np.int32)
    assert unet_weight_map(labels).shape == shape
    assert separate_touching(labels).shape == shape


def test_no_objects_and_all_objects():
    np.testing.assert_array_equal(unet_weight_map(np.zeros((6, 7), np.int32)), np.ones((6, 7), np.float32))
    full = np.arange(1, 43, dtype=np.int32).reshape(6, 7)  # every pixel an object: no background
    np.testing.assert_array_equal(unet_weight_map(full), np.ones((6, 7), np.float32))


# --- unet_weight_map: against the naive oracle -------------------------------------------------

@pytest.mark.parametrize("w0, sigma, class_weights", [
    (10.0, 5.0, "balanced"), (3.0, 2.0, None), (50.0, 8.0, (1.0, 2.0)), (10.0, 0.7, "balanced"),
])
def test_synthetic_nuclei_match_naive(nuclei, w0, sigma, class_weights):
    weights = assert_matches_naive(nuclei[0], w0=w0, sigma=sigma, class_weights=class_weights)
    if sigma >= 2:  # the border term is really there
        assert weights.max() > 1 + 0.5 * w0


def test_separated_labels_match_naive_and_gaps_get_the_border_weight(nuclei):
    _, separated = separate_touching(nuclei[1], return_instances=True)
    weights = assert_matches_naive(separated)
    gaps = (nuclei[1] > 0) & (separated == 0)  # pixels that separation turned into background
    assert gaps.any() and np.median(weights[gaps]) > 5


def test_benchmark_image_matches_naive():
    """The benchmark's input (benchmarks/test_bench_weights.py): 512 x 512, ~120 touching nuclei."""
    _, labels = synthetic_nuclei(1, 512, seed=0, num_objects=120)
    _, separated = separate_touching(labels[0], return_instances=True)
    assert_matches_naive(separated)


def test_batched_odd_sizes_match_naive_and_per_image():
    _, labels = synthetic_nuclei(3, (67, 81), seed=5, num_objects=14)
    batched = assert_matches_naive(labels)
    for image, expected in zip(labels, batched):
        np.testing.assert_array_equal(unet_weight_map(image), expected)


@pytest.mark.parametrize("seed", range(6))
def test_random_blobs_match_naive(seed):
    """Random rectangles and single pixels, at the borders too, overlapping in any order."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((rng.integers(20, 60), rng.integers(20, 60)), np.int32)
    for index in range(1, rng.integers(2, 12)):
        y, x = rng.integers(0, labels.shape[0]), rng.integers(0, labels.shape[1])
        labels[y:y + rng.integers(1, 9), x:x + rng.integers(1, 9)] = index
    assert_matches_naive(labels, w0=10.0, sigma=float(rng.uniform(1, 8)))


def test_two_far_objects_and_non_consecutive_labels():
    labels = np.zeros((40, 200), np.int16)
    labels[18:22, 0:3] = 5
    labels[18:22, 190:200] = 900   # 187 px apart: the border term is far below the tolerance
    weights = assert_matches_naive(labels)
    objects = np.count_nonzero(labels)
    class_only = np.where(labels > 0, labels.size / (2 * objects), labels.size / (2 * (labels.size - objects)))
    np.testing.assert_allclose(weights, class_only, **REORDERED_FP32)
    sparse = labels.astype(np.int64) * 10**9  # huge label values are renumbered, same result
    np.testing.assert_array_equal(unet_weight_map(sparse), unet_weight_map(labels))


def test_non_contiguous_inputs(nuclei):
    flipped = nuclei[0][::-1, ::2]
    assert not flipped.flags.c_contiguous
    assert_matches_naive(flipped)
    tensor = torch.from_numpy(nuclei).transpose(1, 2)
    assert not tensor.is_contiguous()
    result = unet_weight_map(tensor)
    assert isinstance(result, torch.Tensor) and result.dtype == torch.float32 and result.shape == tensor.shape
    np.testing.assert_array_equal(result.numpy(), unet_weight_map(np.ascontiguousarray(tensor.numpy())))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_torch_integer_dtypes(dtype):
    labels = torch.zeros(2, 20, 30, dtype=dtype)
    labels[0, 5:9, 5:9], labels[0, 5:9, 11:15], labels[1, 0:4, 0:4] = 1, 2, 3
    result = unet_weight_map(labels)
    assert result.device == labels.device and result.dtype == torch.float32
    np.testing.assert_allclose(result.numpy(), unet_weight_map_naive(labels.numpy()), atol=WEIGHT_MAP_AGREEMENT)


@pytest.mark.gpu
def test_cuda_tensor_stays_on_its_device():
    labels = torch.zeros(16, 16, dtype=torch.int32, device="cuda")
    labels[2:5, 2:5], labels[2:5, 7:9] = 1, 2
    result = unet_weight_map(labels)
    assert result.device == labels.device
    np.testing.assert_allclose(result.cpu().numpy(), unet_weight_map_naive(labels.cpu().numpy()), atol=WEIGHT_MAP_AGREEMENT)


@pytest.mark.parametrize("labels, kwargs, error, match", [
    (np.array([[0, -3], [1, 2]]), {}, ValueError, r"instance_labels must be >= 0.*-3 at position \(0, 1\)"),
    (np.zeros((4, 4), np.float32), {}, TypeError, "integer instance labels.*float32"),
    (torch.zeros(4, 4, dtype=torch.bool), {}, TypeError, "integer instance labels.*torch.bool"),
    (np.zeros(4, np.int32), {}, ValueError, r"\[H, W\] or batched \[N, H, W\].*\(4,\)"),
    (np.zeros((1, 1, 4, 4), np.int32), {}, ValueError, r"\[H, W\] or batched"),
    ([[0, 1]], {}, TypeError, "numpy array or torch tensor, got list"),
    (np.zeros((4, 4), np.int32), dict(w0=0), ValueError, "w0 must be a finite number > 0, got 0"),
    (np.zeros((4, 4), np.int32), dict(sigma=-1.0), ValueError, "sigma must be a finite number > 0"),
    (np.zeros((4, 4), np.int32), dict(sigma=float("nan")), ValueError, "sigma must"),
    (np.zeros((4, 4), np.int32), dict(class_weights="paper"), ValueError, "class_weights must"),
    (np.zeros((4, 4), np.int32), dict(class_weights=(1.0,)), ValueError, "class_weights must"),
    (np.zeros((4, 4), np.int32), dict(class_weights={0: 1.0}), ValueError, "keys 0 .* and 1"),
    (np.zeros((4, 4), np.int32), dict(class_weights=(1.0, -2.0)), ValueError, "finite numbers >= 0"),
])
def test_bad_input(labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        unet_weight_map(labels, **kwargs)


# --- separate_touching ------------------------------------------------------------------------

def separate_touching_by_loops(labels, connectivity, width):
    """Per-pixel definition: an object pixel with another object's pixel within ``width`` steps."""
    out = labels.copy()
    height, cols = labels.shape
    for y in range(height):
        for x in range(cols):
            if labels[y, x] == 0:
                continue
            for dy in range(-width, width + 1):
                for dx in range(-width, width + 1):
                    within = max(abs(dy), abs(dx)) if connectivity == 8 else abs(dy) + abs(dx)
                    yy, xx = y + dy, x + dx
                    if (within <= width and 0 <= yy < height and 0 <= xx < cols
                            and labels[yy, xx] not in (0, labels[y, x])):
                        out[y, x] = 0
    return out


def test_two_touching_squares():
    labels = np.zeros((6, 10), np.int32)
    labels[1:5, 1:5], labels[1:5, 5:9] = 1, 2
    semantic, instances = separate_touching(labels, return_instances=True)
    assert semantic.dtype == np.int64 and instances.dtype == np.int32
    expected = labels.copy()
    expected[:, 4:6] = 0  # one column from each side: a 2-pixel background gap
    np.testing.assert_array_equal(instances, expected)
    np.testing.assert_array_equal(semantic, (expected > 0).astype(np.int64))


def test_diagonal_contact_depends_on_connectivity():
    labels = np.zeros((4, 4), np.uint8)
    labels[0:2, 0:2], labels[2:4, 2:4] = 1, 2
    np.testing.assert_array_equal(separate_touching(labels, connectivity=4), (labels > 0).astype(np.int64))
    separated = separate_touching(labels, connectivity=8)
    assert separated[1, 1] == 0 and separated[2, 2] == 0 and separated.sum() == 6


@pytest.mark.parametrize("connectivity, width", [(8, 1), (4, 1), (8, 2), (4, 3)])
def test_separate_touching_matches_loops(connectivity, width):
    _, labels = synthetic_nuclei(1, (48, 56), seed=2, num_objects=12)
    _, instances = separate_touching(labels[0], connectivity=connectivity, width=width, return_instances=True)
    np.testing.assert_array_equal(instances, separate_touching_by_loops(labels[0], connectivity, width))


def test_separated_objects_come_back_as_components(nuclei):
    semantic, instances = separate_touching(nuclei, return_instances=True)
    for image_semantic, image_instances in zip(semantic, instances):
        components, count = ndimage.label(image_semantic, structure=np.ones((3, 3)))
        # no component holds two objects
        pairs = np.unique(np.stack([components[image_instances > 0], image_instances[image_instances > 0]]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1] == count


def test_separate_touching_batched_torch_non_contiguous():
    _, labels = synthetic_nuclei(2, (40, 52), seed=4, num_objects=10)
    tensor = torch.from_numpy(labels).transpose(1, 2)
    semantic, instances = separate_touching(tensor, return_instances=True)
    assert semantic.dtype == torch.int64 and instances.dtype == torch.int32
    for i in range(2):  # batched = image by image: nothing leaks between images
        expected = separate_touching(np.ascontiguousarray(labels[i].T), return_instances=True)
        np.testing.assert_array_equal(semantic[i].numpy(), expected[0])
        np.testing.assert_array_equal(instances[i].numpy(), expected[1])


@pytest.mark.parametrize("dtype, ids", [
    (np.int64, (7, 9, 12)), (np.uint64, (7, 9, 12)),                      # ids an int32 holds, 64-bit dtype
    (np.int64, (2**40, 2**62, 2**63 - 1)), (np.uint64, (2**40, 2**63, 2**64 - 1)),   # and ids it does not
])
def test_separate_touching_64_bit_labels(dtype, ids):
    """scipy's grey filters take cval as a double: int64's maximum came back as int64's minimum, so every
    object pixel looked next to a smaller id and was dropped (all background) for any int64 label image."""
    _, labels = synthetic_nuclei(1, (40, 52), seed=4, num_objects=10)
    small = labels[0].astype(np.int32)
    values = np.unique(small)
    wide = np.zeros(small.shape, dtype)
    for rank, value in enumerate(values[1:]):  # the objects get ids far apart, in the order of the small ones
        wide[small == value] = ids[rank % len(ids)] - rank // len(ids)
    assert len(np.unique(wide)) == len(values)
    semantic, instances = separate_touching(wide, return_instances=True)
    expected_semantic, expected_instances = separate_touching(small, return_instances=True)
    assert semantic.any()
    np.testing.assert_array_equal(semantic, expected_semantic)
    np.testing.assert_array_equal(instances > 0, expected_instances > 0)
    assert instances.dtype == dtype
    if dtype == np.int64:   # torch's default integer labels
        np.testing.assert_array_equal(separate_touching(torch.from_numpy(wide)).numpy(), expected_semantic)


@pytest.mark.parametrize("kwargs, match", [
    (dict(connectivity=6), "connectivity must be 4 or 8"),
    (dict(width=0), "width must be an integer >= 1"),
    (dict(width=1.5), "width must be an integer >= 1"),
])
def test_separate_touching_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        separate_touching(np.zeros((4, 4), np.int32), **kwargs)
    with pytest.raises(TypeError, match="integer instance labels"):
        separate_touching(np.zeros((4, 4), np.float64))
