import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unet_fast import geometry


def brute_force_output(n: int, depth: int, padding: str):
    """Push an n x n image through real conv / pool / up-conv ops; None when the size is illegal.

    On the meta device: the ops' own size rules and size errors, without the arithmetic (the same answer for
    each of the 1180 cases below as on the CPU, where convolving images of up to 1000 x 1000 took 3.8 s)."""
    pad = 1 if padding == "same" else 0

    def two_convs(t):
        for _ in range(2):
            t = F.conv2d(t, torch.ones(1, 1, 3, 3, device="meta"), padding=pad)
        return t

    x = torch.ones(1, 1, n, n, device="meta")
    skips = []
    try:
        for level in range(depth):
            x = two_convs(x)
            if level < depth - 1:
                if x.shape[-1] % 2:  # the paper's rule: every pool sees an even size
                    return None
                skips.append(x.shape[-1])
                x = F.max_pool2d(x, 2)
        for skip in reversed(skips):
            x = two_convs(F.conv_transpose2d(x, torch.ones(1, 1, 2, 2, device="meta"), stride=2))
            if x.shape[-1] > skip:
                return None
    except RuntimeError:  # a convolution got an input smaller than its kernel
        return None
    return x.shape[-1] if x.shape[-1] >= 1 else None


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_geometry_matches_brute_force(depth, padding):
    step = 2 ** (depth - 1)
    limit = geometry.min_input_size(depth, padding) + 3 * step + 2
    legal = []
    for n in range(1, limit):
        expected = brute_force_output(n, depth, padding)
        assert geometry.is_valid_input_size(n, depth, padding) == (expected is not None), n
        if expected is not None:
            assert geometry.output_size(n, depth, padding) == expected
            legal.append(n)
    assert legal == geometry.valid_input_sizes(depth, limit - 1, padding)
    assert legal[0] == geometry.min_input_size(depth, padding)
    for n in range(1, limit):
        below, above = geometry.nearest_valid_input_sizes(n, depth, padding)
        assert above == min(m for m in legal + [legal[-1] + step] if m >= n)
        smaller = [m for m in legal if m <= n]
        assert below == (max(smaller) if smaller else None)


def test_paper_numbers():
    assert geometry.output_size(572) == 388
    assert geometry.context() == 92
    assert geometry.valid_input_sizes(5, 572)[:3] == [188, 204, 220]
    assert geometry.nearest_valid_input_sizes(500) == (492, 508)
    assert geometry.input_size_for(388) == 572
    assert geometry.input_size_for(389) == 588
    assert geometry.output_size(256, 5, "same") == 256


def test_crop_offset():
    assert geometry.crop_offset(64, 56) == 4
    assert geometry.crop_offset(392, 392) == 0
    with pytest.raises(ValueError, match="larger"):
        geometry.crop_offset(10, 12)


def test_illegal_size_message_names_the_neighbours():
    with pytest.raises(ValueError, match=r"500.*depth 5.*492 or 508"):
        geometry.output_size(500)
    with pytest.raises(ValueError, match=r"100 is too small.*smallest legal size is 188"):
        geometry.output_size(100)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "5"])
def test_bad_depth(bad):
    with pytest.raises(ValueError, match="depth"):
        geometry.output_size(572, depth=bad)


def test_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        geometry.is_valid_input_size(572, padding="reflect")


def test_input_size_for_rejects_nonpositive():
    with pytest.raises(ValueError, match="output"):
        geometry.input_size_for(0)


@pytest.mark.parametrize("length", [1, 2, 3, 8])
def test_mirror_matches_numpy_reflect_even_far_out(length):
    """Integer indices (numpy) and fractional coordinates (torch) fold alike: numpy's "reflect",
    periodic far out, a one-pixel axis all zeros."""
    for start, stop in ((-25, length + 30), (0, length), (-1, 2)):
        if stop < length:
            continue
        expected = (np.pad(np.arange(length), (-start, stop - length), mode="reflect") if length > 1
                    else np.zeros(stop - start, dtype=int))
        np.testing.assert_array_equal(geometry.mirror_indices(start, stop, length), expected)
        coordinates = torch.arange(start, stop, dtype=torch.float64)
        np.testing.assert_array_equal(geometry.mirror(coordinates, length).numpy(), expected)
    between = geometry.mirror(torch.tensor([-0.25, length - 0.75]), length)  # past the end pixels' centres
    assert torch.equal(between, torch.tensor([0.25, length - 1.25]) if length > 1 else torch.zeros(2))


def test_center_crop_is_a_centred_view():
    x = torch.arange(2 * 9 * 8).reshape(2, 9, 8)
    crop = geometry.center_crop(x, (4, 5))
    assert torch.equal(crop, x[:, 2:6, 1:6]) and crop.data_ptr() == x[:, 2:, 1:].data_ptr()
    with pytest.raises(ValueError, match="cannot crop 8 pixels to a larger size 9"):
        geometry.center_crop(x, (4, 9))


@pytest.mark.parametrize("shape, size", [((2, 3, 9, 12), (4, 5)), ((1, 1, 7, 7), (7, 7)), ((2, 2, 10, 6), (1, 6))])
def test_zero_outside_center_keeps_only_the_window(shape, size):
    x = torch.arange(1, 1 + torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    x = x.contiguous(memory_format=torch.channels_last)
    window = geometry.center_crop(x, size).clone()
    geometry.zero_outside_center(x, size)
    assert torch.equal(geometry.center_crop(x, size), window)
    geometry.center_crop(x, size).zero_()
    assert not x.any()
    with pytest.raises(ValueError, match="larger size"):
        geometry.zero_outside_center(x, (shape[2] + 1, 1))
