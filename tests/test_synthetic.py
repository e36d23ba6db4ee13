import numpy as np
import pytest
from scipy import ndimage

from unet_fast.synthetic import synthetic_nuclei


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of distinct objects with 4-adjacent pixels."""
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        contact = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[contact].tolist(), b[contact].tolist())}
    return pairs


def test_shapes_dtypes_and_range():
    images, labels = synthetic_nuclei(2, (96, 80), seed=3)
    assert images.shape == labels.shape == (2, 96, 80)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.min() >= 0 and images.max() <= 1
    assert np.isfinite(images).all()


def test_deterministic_and_independent_of_n():
    a_img, a_lab = synthetic_nuclei(1, 128, seed=7)
    b_img, b_lab = synthetic_nuclei(3, 128, seed=7)
    np.testing.assert_array_equal(a_img[0], b_img[0])
    np.testing.assert_array_equal(a_lab[0], b_lab[0])
    c_img, _ = synthetic_nuclei(1, 128, seed=8)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(b_img[0], b_img[1])


def test_realistic_512_image():
    images, labels = synthetic_nuclei(1, 512, seed=0, num_objects=120)
    image, label = images[0], labels[0]
    ids = np.unique(label)
    count = len(ids) - 1
    assert 100 <= count <= 120                     # a few hidden ones are dropped
    np.testing.assert_array_equal(ids, np.arange(count + 1))  # numbered 1..K
    assert len(touching_pairs(label)) >= 40        # dense clusters, so the border weights matter
    assert image[label > 0].mean() > 3 * image[label == 0].mean()
    assert image[label > 0].std() > 0.05           # texture, not flat discs
    # every object is one 4-connected piece
    for index, box in enumerate(ndimage.find_objects(label), start=1):
        assert ndimage.label(label[box] == index)[1] == 1


def test_num_objects_zero_and_default_density():
    images, labels = synthetic_nuclei(1, 64, seed=1, num_objects=0)
    assert labels.max() == 0 and images.max() < 0.5
    _, labels = synthetic_nuclei(1, 256, seed=1)   # default: 120 per 512 x 512 -> 30
    assert 20 <= labels.max() <= 30


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must"),
    (dict(size=8), "size must"),
    (dict(size=(32, 32, 3)), "size must"),
    (dict(seed=-1), "seed must"),
    (dict(num_objects=-2), "num_objects must"),
    (dict(radius_range=(10, 5)), "radius_range must"),
    (dict(touching_fraction=1.5), "touching_fraction must"),
    (dict(blur_sigma=-1), "blur_sigma must"),
    (dict(photons=0), "photons must"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_nuclei(**kwargs)
