import numpy as np
import pytest
from scipy import ndimage

from tolerances import REORDERED_FP32
from unet_fast.synthetic import _dome, _visible_rim, synthetic_nuclei
from unet_fast.weights import separate_touching


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


def test_touching_nuclei_show_a_darker_seam():
    """Where two nuclei touch the image dips, as between real touching nuclei: the cue a network
    needs to learn the background border that separate_touching draws there (before the seam was
    only 9 % darker than the nuclei beside it, as texture and noise are)."""
    images, labels = synthetic_nuclei(2, 256, seed=0)
    seam_means, beside_means = [], []
    for image, label in zip(images, labels):
        separated = separate_touching(label) > 0
        border = (label > 0) & ~separated                        # the pixels separate_touching gives up
        to_border = ndimage.distance_transform_edt(~border)
        to_background = ndimage.distance_transform_edt(label > 0)
        seam_means.append(image[border & (to_background > 2)].mean())       # contacts, not outer edges
        beside_means.append(image[separated & (to_border >= 2) & (to_border <= 4) & (to_background > 4)].mean())
    assert np.mean(seam_means) < 0.75 * np.mean(beside_means)


def test_dome_profile():
    rim = np.array([0.0, 0.5, 0.7, 0.9, 0.99, 1.0, 1.2], np.float32)
    profile = _dome(rim)
    np.testing.assert_allclose(profile[:3], 1 - 0.2 * rim[:3] ** 2, **REORDERED_FP32)   # flat inside (bar a bulge)
    np.testing.assert_allclose(profile[3], (1 - 0.2 * 0.81) * np.sqrt(1 - 0.81) / 0.7, **REORDERED_FP32)   # thinning edge
    assert profile[5] == profile[6] == 0                      # nothing at or beyond the edge
    assert np.all(np.diff(profile) <= 0)


def test_visible_rim_at_contacts_not_at_the_image_edge():
    labels = np.zeros((13, 21), np.int32)      # odd sizes on purpose
    labels[2:10, 2:10] = 1
    labels[2:10, 10:18] = 2                     # touches object 1 along a column
    labels[9:13, 18:21] = 3                     # cut by the image's bottom and right edges
    drawn = np.zeros(labels.shape, np.float32)  # as if drawing had left only interior values
    rim = _visible_rim(labels, drawn, np.array([4.0, 4.0, 4.0], np.float32))
    assert rim[labels == 0].max() == 0
    # edge pixels (d = 1) of either object, at the contact as at the background: 1 - 0.5 / 4
    np.testing.assert_allclose(rim[5, [9, 10, 2, 17]], 0.875)
    np.testing.assert_allclose(rim[5, 5], 1 - 3.5 / 4)       # 4 pixels from the nearest edge
    # object 3's corner pixel is 3 pixels from its nearest edge (column 17), not 1 from the image's
    np.testing.assert_allclose(rim[12, 20], 1 - 2.5 / 4)
    # a larger drawn radius wins
    drawn[5, 5] = 0.95
    assert _visible_rim(labels, drawn, np.array([4.0, 4.0, 4.0], np.float32))[5, 5] == np.float32(0.95)


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
