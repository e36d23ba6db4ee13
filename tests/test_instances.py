"""unet_fast.instances: the rules against an independent whole-image oracle, and the streamed
(block by block) labels equal to the whole-image labels for fuzzed image, block and tile sizes."""
import dataclasses
import errno
import json

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings, strategies as st
from scipy import ndimage

from unet_fast import _extension, geometry, instances, reference
from unet_fast.inference import predict_tiled
from unet_fast.instances import InstanceOptions, label_instances
from unet_fast.normalization import Normalization
from unet_fast.pixel_size import PixelSize, read_pixel_size
from unet_fast.synthetic import synthetic_nuclei
from unet_fast.weights import separate_touching
from optional_deps import needs_zarr

FOUR = ndimage.generate_binary_structure(2, 1)


def split_objects(labels, n, probability, options):
    """Rule 1's split, object by object on the whole image (the module's flooding, tested on its own)."""
    labels = labels.copy()
    for k, box in enumerate(ndimage.find_objects(labels), 1):
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        inside = labels[box] == k
        cores, m = ndimage.label((probability[box] > options.split) & inside, FOUR)
        big = np.flatnonzero(np.bincount(cores.ravel(), minlength=m + 1)[1:] >= options.core_size) + 1
        if len(big) >= 2:
            markers = np.where(np.isin(cores, big), cores, 0).astype(np.int32)
            level = np.rint((1 - probability[box]) * 254).astype(np.uint8)
            pieces = instances._flood(level, markers, inside)      # checked on its own below
            labels[box][inside] = n + pieces[inside]
            n += m + 1
    return labels


def oracle(mask, options: InstanceOptions, probability=None):
    """The module docstring's rules, written the slow, obvious way on the whole image."""
    labels, n = ndimage.label(mask, FOUR)
    if options.split is not None and probability is not None:
        labels = split_objects(labels, n, probability, options)
    _, first = np.unique(labels.ravel(), return_index=True)         # renumbered in raster order of first pixels
    ids = np.unique(labels.ravel())
    order = np.zeros(ids.max() + 1, np.int64)
    ranked = ids[np.argsort(first)]
    order[ranked[ranked > 0]] = np.arange(1, (ranked > 0).sum() + 1)
    labels, n = order[labels], (ranked > 0).sum()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    kept = np.flatnonzero(sizes >= options.min_size)
    kept = kept[kept > 0]
    renumber = np.zeros(n + 1, np.int64)
    renumber[kept] = np.arange(1, len(kept) + 1)
    out = renumber[labels]
    if options.fill_holes:
        regions, count = ndimage.label(out == 0, FOUR)
        for k in range(1, count + 1):
            region = regions == k
            if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
                continue
            owners = np.unique(out[ndimage.binary_dilation(region, FOUR) & ~region])
            if len(owners) == 1:
                out[region] = owners[0]
    if options.border and out.max() > 0:
        ids = np.arange(1, out.max() + 1)
        distance = np.stack([ndimage.distance_transform_edt(out != k) for k in ids])
        several = (distance <= options.border).sum(0) >= 2
        out = np.where((out == 0) & several, ids[np.argmin(distance, axis=0)], out)
    return out


def blobs(seed, height, width, kind):
    rng = np.random.default_rng(seed)
    if kind == "noise":             # worst case for connectivity: salt and pepper
        return rng.random((height, width)) < 0.45
    if kind == "nuclei":            # what a U-Net trained on separated labels predicts: 1-px-per-side borders
        _, labels = synthetic_nuclei(1, max(height, width, 16), seed=seed)
        return separate_touching(labels[0])[:height, :width] > 0
    smooth = ndimage.gaussian_filter(rng.random((height, width)), 1.5)
    return smooth > np.quantile(smooth, 0.5)


options_strategy = st.builds(InstanceOptions, min_size=st.integers(0, 25), fill_holes=st.booleans(),
                             border=st.integers(0, 3))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10 ** 6), height=st.integers(1, 48), width=st.integers(1, 48),
       kind=st.sampled_from(["noise", "nuclei", "smooth"]), options=options_strategy, block=st.integers(1, 50))
def test_blocks_equal_the_whole_image_and_the_oracle(seed, height, width, kind, options, block):
    mask = blobs(seed, height, width, kind)
    whole = label_instances(mask, options, block=max(height, width))
    np.testing.assert_array_equal(whole, oracle(mask, options))
    np.testing.assert_array_equal(label_instances(mask, options, block=block), whole)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10 ** 6), height=st.integers(1, 60), width=st.integers(1, 60), plateaus=st.booleans(),
       options=options_strategy, threshold=st.floats(0.3, 0.6), split=st.floats(0.05, 0.35),  # sum < 1
       core_size=st.integers(1, 6), block=st.integers(1, 50))
def test_split_objects_the_same_in_blocks_and_as_the_oracle(seed, height, width, plateaus, options, threshold, split,
                                                             core_size, block):
    rng = np.random.default_rng(seed)
    probability = ndimage.gaussian_filter(rng.random((height, width)), rng.uniform(1, 3))
    probability = (probability - probability.min()) / (np.ptp(probability) + 1e-9)
    if plateaus:                       # ties for the watershed to break
        probability = np.round(probability * 8) / 8
    options = InstanceOptions(options.min_size, options.fill_holes, options.border, threshold, threshold + split,
                              core_size)
    mask = probability > threshold
    whole = label_instances(mask, options, probability=probability, block=max(height, width))
    np.testing.assert_array_equal(whole, oracle(mask, options, probability))
    np.testing.assert_array_equal(label_instances(mask, options, probability=probability, block=block), whole)


def test_split_by_hand():
    """Two touching discs, one object at P > 0.5, two cores at P > 0.8: two objects split along the valley."""
    y, x = np.mgrid[:21, :34]
    probability = np.maximum(np.exp(-((y - 10) ** 2 + (x - 10) ** 2) / 60), np.exp(-((y - 10) ** 2 + (x - 22) ** 2) / 60))
    options = InstanceOptions(min_size=0, border=0, split=0.8)
    assert label_instances(probability > 0.5, InstanceOptions(min_size=0, border=0)).max() == 1
    got = label_instances(probability > 0.5, options, probability=probability)
    assert got.max() == 2 and (got[:, :16][probability[:, :16] > 0.5] == 1).all() and (got[:, 17:] != 1).all()
    np.testing.assert_array_equal(label_instances(probability > 0.5, options),      # a mask alone: not split
                                  label_instances(probability > 0.5, InstanceOptions(min_size=0, border=0, split=None)))
    with pytest.raises(ValueError, match="probability must have the foreground's shape"):
        label_instances(probability > 0.5, options, probability=probability[1:])


def test_rules_by_hand():
    mask = np.zeros((9, 12), bool)
    mask[1:8, 1:6] = True        # a cell with a hole
    mask[4, 3] = False
    mask[1:8, 7:11] = True       # its neighbour behind a 1-px background border (column 6)
    mask[0, 11] = True           # a speck
    got = label_instances(mask, InstanceOptions(min_size=2, fill_holes=True, border=1))
    want = np.zeros(mask.shape, np.uint16)
    want[1:8, 1:7] = 1           # hole filled, the border column given to the nearer (equal: smaller) label
    want[1:8, 7:11] = 2
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint16
    raw = label_instances(mask, InstanceOptions(min_size=0, fill_holes=False, border=0))
    np.testing.assert_array_equal(raw, ndimage.label(mask, FOUR)[0])


def test_a_hole_with_a_speck_inside_is_filled_and_a_pocket_between_two_objects_is_not():
    mask = np.zeros((12, 20), bool)
    mask[1:10, 1:10] = True
    mask[3:7, 3:7] = False
    mask[4, 4] = True            # a speck in the hole: removed, then the hole is filled
    mask[1:10, 11:19] = True
    mask[0:11, 10] = False
    got = label_instances(mask, InstanceOptions(min_size=3, fill_holes=True, border=0))
    assert (got[1:10, 1:10] == 1).all()
    two = np.array([[0, 0, 0, 0, 0, 0],       # objects 1 and 2 meet only diagonally, around a pocket
                    [0, 1, 1, 1, 0, 0],
                    [0, 1, 0, 0, 2, 0],
                    [0, 1, 0, 0, 2, 0],
                    [0, 0, 2, 2, 2, 0],
                    [0, 0, 0, 0, 0, 0]])
    got = label_instances(two > 0, InstanceOptions(min_size=0, fill_holes=True, border=0))
    np.testing.assert_array_equal(got, two)


def test_stacks_are_labelled_plane_by_plane_and_large_counts_take_uint32():
    mask = np.zeros((2, 6, 6), bool)
    mask[0, 1:3, 1:3] = True
    mask[1, 3:5, 3:5] = True
    got = label_instances(mask, InstanceOptions(min_size=0), block=4)
    assert got.shape == (2, 6, 6) and got[0].max() == 1 and got[1].max() == 1
    grid = np.zeros((2 * 260, 2 * 260), bool)
    grid[::2, ::2] = True        # 67,600 single-pixel objects
    many = label_instances(grid, InstanceOptions(min_size=0, border=0), block=128)
    assert many.dtype == np.uint32 and many.max() == 260 * 260


@needs_zarr
def test_file_outputs_and_scratch_on_disk(tmp_path, monkeypatch):
    import zarr

    mask = blobs(3, 40, 50, "nuclei")
    want = label_instances(mask)
    monkeypatch.setattr(instances, "IN_MEMORY_PIXELS", 10)     # scratch arrays as files beside the output
    written = label_instances(mask, out=tmp_path / "labels.tif", block=16)
    np.testing.assert_array_equal(tifffile.imread(written), want)
    written = label_instances(mask, out=tmp_path / "labels.ome.zarr", block=16)
    group = zarr.open_group(str(written), mode="r")
    assert "image-label" in group.attrs and group["0"].dtype == np.uint16
    np.testing.assert_array_equal(group["0"][:], want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.ome.zarr", "labels.tif"]   # scratch removed
    filled = label_instances(mask, out=np.zeros(mask.shape, np.int32))
    np.testing.assert_array_equal(filled, want)


@needs_zarr
def test_an_ome_zarr_of_instances_has_a_pyramid_of_the_final_ids(tmp_path, monkeypatch):
    """The pyramid is built from what the second pass writes, the final ids (the borders given back, objects
    numbered 1..K): level k is level 0[::2**k, ::2**k], each plane on its own; no id is averaged or made up."""
    import zarr

    from unet_fast import sinks

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 16)
    mask = np.stack([blobs(seed, 41, 50, "smooth") for seed in (3, 4)])
    want = label_instances(mask)
    group = zarr.open_group(str(label_instances(mask, out=tmp_path / "labels.ome.zarr", block=16)), mode="r")
    assert "image-label" in group.attrs and group.attrs["multiscales"][0]["type"] == "nearest"
    assert [d["path"] for d in group.attrs["multiscales"][0]["datasets"]] == ["0", "1", "2"]    # 41 x 50 to 11 x 13
    for k in range(3):
        level = group[str(k)][...]
        assert level.dtype == np.uint16 and level.shape == (2,) + tuple(-(-s // 2 ** k) for s in (41, 50))
        np.testing.assert_array_equal(level, want[:, ::2 ** k, ::2 ** k])
    assert set(np.unique(group["2"][...])) <= set(np.unique(want)) and want.max() >= 5


def test_scratch_on_a_disk_without_room_is_an_error_not_a_sigbus(tmp_path, monkeypatch):
    """Scratch arrays are sparse memory-mapped files: on a full disk a write into one raised SIGBUS, killing the
    process with no message. An array the disk has no room for is refused when it is made, naming the folder and
    the fix, and nothing is left behind."""
    import collections

    mask = blobs(1, 40, 50, "nuclei")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(instances.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(instances, "IN_MEMORY_PIXELS", 10)
    with pytest.raises(OSError, match=f"not enough free disk space for a scratch array .* in {tmp_path} "
                                      f"\\(0.0 GiB free\\).*TMPDIR") as raised:
        label_instances(mask, out=tmp_path / "labels.tif", block=16)
    assert raised.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(instances.shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    np.testing.assert_array_equal(tifffile.imread(label_instances(mask, out=tmp_path / "labels.tif", block=16)),
                                  label_instances(mask))


@pytest.mark.parametrize("call, message", [
    (lambda: InstanceOptions(min_size=-1), "min_size must be an integer >= 0, got -1"),
    (lambda: InstanceOptions(border=1.5), "border must be an integer >= 0"),
    (lambda: InstanceOptions(fill_holes="yes"), "fill_holes must be True or False"),
    (lambda: InstanceOptions(threshold=1.0), "threshold must be a probability in (0, 1), got 1.0"),
    (lambda: InstanceOptions(threshold=0.6, split=0.5), "split must be None or a probability in (threshold, 1)"),
    (lambda: InstanceOptions(split=0.8, core_size=0), "core_size must be a positive integer"),
    (lambda: InstanceOptions(smoothing=-0.5), "smoothing must be 0 (off) or a sigma in px from 0.1 to 64.0, got -0.5"),
    (lambda: InstanceOptions(smoothing=float("nan")), "smoothing must be 0 (off) or a sigma in px"),
    (lambda: InstanceOptions(smoothing=65), "smoothing must be 0 (off) or a sigma in px from 0.1 to 64.0, got 65"),
    (lambda: InstanceOptions(smoothing=True), "smoothing must be 0 (off) or a sigma in px"),
    (lambda: InstanceOptions(smoothing="2"), "smoothing must be 0 (off) or a sigma in px"),
    (lambda: InstanceOptions(smoothing=1e-320), "smoothing must be 0 (off) or a sigma in px from 0.1 to 64.0"),
    (lambda: instances.ClassView(np.zeros((2, 5, 4)), smoothing=1)[::2], "step-1 slices only, got step 2"),
    (lambda: instances.ClassView(np.zeros((2, 5, 4)), smoothing=1)[5], "index 5 is out of range for 5 pixels"),
    (lambda: instances.ClassView(np.zeros((2, 5, 4)), smoothing=1)[0, 0, 0], "at most 2 indices"),
    (lambda: label_instances(np.zeros((0, 3), bool)), "non-empty"),
    (lambda: label_instances(np.zeros((3, 3), bool), block=0), "block must be a positive integer"),
    (lambda: label_instances(np.ones((3, 3), bool), out=np.zeros((3, 3), np.float32)), "integer array"),
    (lambda: label_instances(np.ones((3, 3), bool), out=np.zeros((2, 3), np.int32)), "shape (2, 3)"),
])
def test_bad_arguments(call, message):
    with pytest.raises((ValueError, TypeError, IndexError), match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def smoothed_oracle(plane, sigma):
    """InstanceOptions.smoothing's definition, written out: a normalised Gaussian to 4 sigma, the plane mirrored
    about its edges (d c b a | a b c d), in float64, along rows then columns."""
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(plane.astype(np.float64), radius, mode="symmetric")      # mirrors again where radius > size
    rows = sum(w * padded[k:k + plane.shape[0]] for k, w in enumerate(taps))
    return sum(w * rows[:, k:k + plane.shape[1]] for k, w in enumerate(taps))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10 ** 6), height=st.integers(1, 40), width=st.integers(1, 40),
       sigma=st.floats(0.3, 6.0), data=st.data())
def test_smoothing_is_the_gaussian_and_any_block_of_it_is_exact(seed, height, width, sigma, data):
    rng = np.random.default_rng(seed)
    probabilities = rng.random((2, 3, height, width)).astype(np.float32)       # (Z, K, H, W)
    whole = instances.smoothed(probabilities[1, 1], sigma)
    assert whole.dtype == np.float32
    np.testing.assert_allclose(whole, smoothed_oracle(probabilities[1, 1], sigma), atol=2e-6)
    view = instances.ClassView(probabilities, channel=1, stacked=True, smoothing=sigma)[1]
    mask = instances.ClassView(probabilities, channel=1, stacked=True, threshold=0.5, smoothing=sigma)[1]
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    np.testing.assert_array_equal(view[y0:y1, x0:x1], whole[y0:y1, x0:x1])        # bit for bit: not approx
    np.testing.assert_array_equal(view[y0, x0:x1], whole[y0, x0:x1])              # the seam rows and columns
    np.testing.assert_array_equal(view[y0:y1, x1 - 1], whole[y0:y1, x1 - 1])
    np.testing.assert_array_equal(view[-1], whole[-1])                          # negative indices, as numpy's
    np.testing.assert_array_equal(view[y0 - height, x0 - width:], whole[y0 - height, x0 - width:])
    np.testing.assert_array_equal(mask[y0:y1, x0:x1], whole[y0:y1, x0:x1] > 0.5)
    options = InstanceOptions(smoothing=sigma, threshold=0.4, split=None)
    np.testing.assert_array_equal(instances.foreground_mask(probabilities[:, 1], options)[1], whole > 0.4)
    transposed = np.ascontiguousarray(probabilities[1, 1].T).T                  # a non-contiguous plane
    np.testing.assert_array_equal(instances.smoothed(transposed, sigma), whole)


def test_smoothing_is_on_by_default_only_with_the_split():
    """A smoothed foreground bridges thin valleys that only the split parts again: without it the default is off."""
    assert InstanceOptions().smoothing == 1.5 and InstanceOptions(split=0.8).smoothing == 1.5
    assert InstanceOptions(split=None).smoothing == 0 and InstanceOptions(split=None, smoothing=2).smoothing == 2
    assert InstanceOptions(split=None) == InstanceOptions(split=None, smoothing=0)
    assert dataclasses.asdict(InstanceOptions())["smoothing"] == 1.5       # what outputs' provenance records
    numpy = InstanceOptions(min_size=np.int64(3), border=np.uint8(1), threshold=np.float32(0.25),
                            split=np.float16(0.75), core_size=np.int32(2), smoothing=np.float32(2))
    assert json.loads(json.dumps(dataclasses.asdict(numpy))) == dict(
        min_size=3, fill_holes=True, border=1, threshold=0.25, split=0.75, core_size=2, smoothing=2.0)


def test_smoothing_straightens_a_ragged_outline_and_keeps_cores_apart():
    """A disk with a spur and a notch: smoothed at 1.5 px both go and the disk is the disk (but for the single
    pixels at the tips of its axes), where without smoothing the outline stays ragged; two disks touching
    across a valley, each with its own core, stay two objects."""
    yy, xx = np.mgrid[:40, :70]
    disk = (yy - 20) ** 2 + (xx - 15) ** 2 <= 100
    ragged = disk.copy()
    ragged[20, 26:28] = True                 # a spur out of the right edge
    ragged[9:12, 15] = False                 # a notch into the top
    probability = np.where(ragged, 0.99, 0.01).astype(np.float32)
    smooth = label_instances(instances.foreground_mask(probability, InstanceOptions()), InstanceOptions(),
                             probability=probability)
    assert smooth.max() == 1 and ((smooth > 0) != disk).sum() == 3 and not smooth[20, 5]   # the tips
    rough = label_instances(probability > 0.5, InstanceOptions(smoothing=0), probability=probability)
    assert rough.max() == 1 and not rough[11, 15] and rough[20, 27]       # the notch and the spur
    other = (yy - 20) ** 2 + (xx - 36) ** 2 <= 100                    # touches the disk at (20, 25)-(20, 26)
    probability = np.where(disk | other, 0.99, 0.01).astype(np.float32)
    probability[:, 25:27] = np.minimum(probability[:, 25:27], 0.4)    # a valley between the two cores
    options = InstanceOptions(border=0)
    joined = instances.foreground_mask(probability, options)
    assert joined[20, 25:27].all() and label_instances(joined, dataclasses.replace(options, split=None)).max() == 1
    two = label_instances(joined, options, probability=probability)
    assert two.max() == 2 and two[20, 15] != two[20, 36]


def two_class_net(image=None, seed=0):
    """A random 2-class net, its bias set so that about half the pixels of ``image`` are foreground."""
    torch.manual_seed(seed)
    model = reference.UNet(in_channels=1, num_classes=2, depth=2, base_channels=4).eval()
    if image is not None:
        logits = predict_tiled(model, image, output="logits", progress=False, normalization=NONE)
        with torch.no_grad():
            model.head.bias[1] -= float(np.median(logits[1] - logits[0]))
    return model


NONE = Normalization(mode="none")


class CentreThreshold(torch.nn.Module):
    """A valid-padding '2-class U-Net' whose foreground is where its input is above 0.5: the crop of a
    depth-2 U-Net, the prediction a pixel-wise function, so that tiles cannot change it at all (a real
    network's logits differ in the last bits between tile sizes, which can flip a pixel at a tie)."""

    depth, padding, in_channels, num_classes = 2, "valid", 1, 2

    def forward(self, x):
        margin = (x.shape[-1] - geometry.output_size(x.shape[-1], self.depth, self.padding)) // 2
        x = x[..., margin:x.shape[-2] - margin, margin:x.shape[-1] - margin]
        return torch.cat([0.5 - x, x - 0.5], 1)


@settings(max_examples=15, deadline=None)
@given(height=st.integers(20, 90), width=st.integers(20, 90), tile=st.sampled_from([44, 60, 92]),
       block=st.integers(5, 40), smoothing=st.sampled_from([0, 0.7, 1.5, 3.0]))
def test_predict_tiled_instances_do_not_depend_on_tiles_or_blocks(height, width, tile, block, smoothing):
    image = blobs(height * width, height, width, "nuclei").astype(np.float32)
    options = InstanceOptions(min_size=4, border=2, smoothing=smoothing)
    probability = predict_tiled(CentreThreshold(), image, output="probabilities", progress=False,
                                normalization=NONE, tile_size=140)[1]
    want = label_instances(instances.foreground_mask(probability, options), options, probability=probability,
                           block=max(height, width))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(instances, "DEFAULT_BLOCK", block)
        got = predict_tiled(CentreThreshold(), image, output="instances", progress=False, normalization=NONE,
                            tile_size=tile, instance_options=options)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_a_foreground_threshold_other_than_the_argmax(threshold, tmp_path, monkeypatch):
    image = blobs(5, 30, 40, "smooth").astype(np.float32) * 0.6 + 0.2    # probabilities 0.4 .. 0.6 and more
    image += np.random.default_rng(0).normal(0, 0.15, image.shape).astype(np.float32)
    probability = 1 / (1 + np.exp(-2 * (image.astype(np.float64) - 0.5)))      # CentreThreshold's softmax
    probability[np.abs(probability - threshold) < 1e-3] = 0.01   # no ties within float16's rounding
    image = (0.5 + np.log(probability / (1 - probability)) / 2).astype(np.float32)
    options = InstanceOptions(min_size=0, threshold=threshold, smoothing=0)
    want = label_instances(probability > threshold, options)
    got = predict_tiled(CentreThreshold(), image, output="instances", progress=False, normalization=NONE,
                        tile_size=44, instance_options=options)
    np.testing.assert_array_equal(got, want)
    assert got.max() > 1
    monkeypatch.setattr(instances, "IN_MEMORY_PIXELS", 10)
    stack = predict_tiled(CentreThreshold(), np.stack([image, image[::-1]]), output="instances", progress=False,
                          normalization=NONE, tile_size=60, instance_options=options, layout="ZYX",
                          out=tmp_path / "stack.tif")
    np.testing.assert_array_equal(tifffile.imread(stack)[0], got)


@settings(max_examples=6, deadline=None)
@given(height=st.integers(20, 80), width=st.integers(20, 80), tile=st.sampled_from([44, 60, 92]),
       block=st.integers(5, 40))
def test_predict_tiled_split_instances_do_not_depend_on_tiles_or_blocks(height, width, tile, block):
    image = 4 * blobs(height + width, height, width, "smooth").astype(np.float32)     # probabilities 0.12 .. 0.98
    image += ndimage.gaussian_filter(np.random.default_rng(height).random((height, width)), 2).astype(np.float32)
    options = InstanceOptions(min_size=3, split=0.9)
    probability = predict_tiled(CentreThreshold(), image, output="probabilities", progress=False,
                                normalization=NONE, tile_size=140)[1]
    want = label_instances(instances.foreground_mask(probability, options), options, probability=probability)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(instances, "DEFAULT_BLOCK", block)
        got = predict_tiled(CentreThreshold(), image, output="instances", progress=False, normalization=NONE,
                            tile_size=tile, instance_options=options)
    np.testing.assert_array_equal(got, want)


def test_predict_tiled_instances_of_a_unet_are_its_labels_made_objects():
    image = blobs(7, 70, 50, "smooth").astype(np.float32)
    model = two_class_net(image)
    options = InstanceOptions(min_size=2, border=1, split=None, smoothing=0)   # a random net draws many tiny objects
    mask = predict_tiled(model, image, output="labels", progress=False, normalization=NONE, tile_size=60)
    got = predict_tiled(model, image, output="instances", progress=False, normalization=NONE, tile_size=60,
                        instance_options=options)
    np.testing.assert_array_equal(got, label_instances(mask, options))
    assert got.max() > 1


def test_predict_tiled_instances_to_files_and_stacks(tmp_path, monkeypatch):
    image = np.random.default_rng(2).normal(0, 1, (2, 50, 60)).astype(np.float32)
    model = two_class_net(image[0])
    none = NONE
    want = predict_tiled(model, image, output="instances", progress=False, normalization=none, layout="ZYX")
    assert want.shape == (2, 50, 60) and want.dtype == np.uint16
    np.testing.assert_array_equal(want[1], predict_tiled(model, image[1], output="instances", progress=False,
                                                         normalization=none))
    monkeypatch.setattr(instances, "IN_MEMORY_PIXELS", 10)
    size = PixelSize(0.5, 0.25, z=2.0)
    path = predict_tiled(model, image, output="instances", progress=False, normalization=none, layout="ZYX",
                         tile_size=44, out=tmp_path / "stack.tif", pixel_size=size)
    np.testing.assert_array_equal(tifffile.imread(path), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.tif"]
    assert read_pixel_size(path) == size                       # written into the labels as into any output


def test_predict_tiled_instances_bad_arguments(tmp_path):
    three = reference.UNet(in_channels=1, num_classes=3, depth=2, base_channels=2)
    with pytest.raises(ValueError, match="needs a model of 2 classes .* this one has 3: use output='labels'"):
        predict_tiled(three, np.zeros((20, 20), np.float32), output="instances", progress=False)
    model = two_class_net()
    with pytest.raises(ValueError, match="instance_options applies to output='instances' only"):
        predict_tiled(model, np.zeros((20, 20), np.float32), output="labels", instance_options=InstanceOptions())
    with pytest.raises(ValueError, match="must end in .tif, .tiff or .zarr"):
        predict_tiled(model, np.zeros((20, 20), np.float32), output="instances", out=tmp_path / "x.png")
    with pytest.raises(TypeError, match="InstanceOptions"):
        predict_tiled(model, np.zeros((20, 20), np.float32), output="instances", instance_options={"min_size": 3})


@needs_zarr
def test_labels_whose_ome_zarr_cannot_be_marked_leave_nothing(tmp_path, monkeypatch):
    """The "image-label" attribute is written when the output opens (with the group's other attributes, by the
    writer): a full disk there leaves no hidden partial folder (no caller held the writer yet to abort it)."""
    import zarr
    import zarr.storage._local as local_store

    put = local_store._put

    def disk_full_for_attributes(path, value, *args, **kwargs):
        if path.name == ".zattrs":
            raise OSError(errno.ENOSPC, "No space left on device")
        return put(path, value, *args, **kwargs)

    monkeypatch.setattr(local_store, "_put", disk_full_for_attributes)
    with pytest.raises(OSError, match="No space left"):
        label_instances(np.ones((20, 30), bool), out=tmp_path / "y.ome.zarr")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(local_store, "_put", put)
    label_instances(np.ones((20, 30), bool), out=tmp_path / "y.ome.zarr")
    assert zarr.open_group(str(tmp_path / "y.ome.zarr"), mode="r").attrs["image-label"] == {"version": "0.4"}


def test_split_follows_the_valley_between_two_cores():
    """One object (the whole image) with two equal bumps of probability: the valley between them is the
    column in the middle, so each half goes to its own core, whatever the order the flood takes."""
    y, x = np.mgrid[:20, :41]
    bump = lambda cx: np.exp(-((y - 10) ** 2 + (x - cx) ** 2) / 40)
    probability = 0.5 + 0.5 * np.maximum(bump(10), bump(30))          # valley along column 20
    options = InstanceOptions(min_size=0, border=0, smoothing=0)
    for flip in (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1]):
        got = flip(label_instances(np.ones((20, 41), bool), options, probability=flip(probability).copy()))
        assert got.max() == 2 and len(np.unique(got[:, :20])) == 1 and len(np.unique(got[:, 21:])) == 1
        assert got[0, 0] != got[0, -1]


def minimax_levels(level, inside, marker):
    """The lowest highest level of a 4-connected path inside ``inside`` from ``marker`` (bool) to each pixel,
    by thresholds: the first level at which the pixel and the marker lie in one component."""
    best = np.full(level.shape, np.inf)
    for value in np.unique(level[inside]):
        components = ndimage.label(inside & (level <= value), FOUR)[0]
        reached = np.isin(components, np.unique(components[marker & (components > 0)]))
        best[reached & np.isinf(best)] = value
    return best


FLOODS = {"default": instances._flood, "python": instances._flood_python}


@pytest.mark.parametrize("flood", FLOODS)
@pytest.mark.parametrize("seed", range(6))
def test_flood_gives_each_pixel_the_core_it_reaches_climbing_least(seed, flood):
    rng = np.random.default_rng(seed)
    level = np.rint(ndimage.gaussian_filter(rng.random((24, 30)), 2) * 2000 % 255).astype(np.uint8)
    components, _ = ndimage.label(ndimage.gaussian_filter(rng.random((24, 30)), 3) > 0.45, FOUR)
    inside = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    markers = np.zeros(level.shape, np.int32)
    for k, at in enumerate(rng.choice(np.flatnonzero(inside), 3, replace=False), 1):
        markers.flat[at] = k
    got = FLOODS[flood](level, markers, inside)
    assert (got[~inside] == 0).all() and (got[inside] > 0).all() and (got[markers > 0] == markers[markers > 0]).all()
    climbs = np.stack([minimax_levels(level, inside, markers == k) for k in (1, 2, 3)])
    assigned = np.take_along_axis(climbs, np.maximum(got, 1)[None].astype(np.int64) - 1, 0)[0]
    assert (assigned[inside] == climbs.min(0)[inside]).all()
    for k in (1, 2, 3):                                              # every piece one 4-connected region
        assert ndimage.label(got == k, FOUR)[1] == 1


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (33, 47)])
@pytest.mark.parametrize("seed", range(3))
def test_the_compiled_flood_equals_the_python_one_tie_for_tie(shape, seed):
    """The extension's bucket queue and the heap take pixels in the same (cost, order of entry): the same labels,
    plateaus (few levels, many ties) and markers outside ``inside`` included, from strided inputs too."""
    if not _extension.has_kernel("watershed_flood", "cpu"):
        pytest.skip(f"the extension is not loaded: {_extension.describe()}")
    rng = np.random.default_rng(seed)
    level = (rng.integers(0, 4, (shape[1], shape[0])) * 60).astype(np.uint8).T            # strided
    inside = rng.random(shape) > 0.2
    markers = np.where(rng.random(shape) > 0.9, rng.integers(1, 5, shape), 0)[:, ::-1]    # strided
    expected = instances._flood_python(np.ascontiguousarray(level), np.ascontiguousarray(markers), inside)
    np.testing.assert_array_equal(instances._flood(level, markers, inside), expected)
    np.testing.assert_array_equal(instances._flood(level, np.zeros(shape, np.int64), inside), np.zeros(shape))


def test_the_compiled_flood_names_a_wrong_argument():
    if not _extension.has_kernel("watershed_flood", "cpu"):
        pytest.skip(f"the extension is not loaded: {_extension.describe()}")
    level, markers = torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3, 4, dtype=torch.int64)
    inside = torch.ones(3, 4, dtype=torch.bool)
    for bad, name in (((level.float(), markers, inside), "level"), ((level, markers.int(), inside), "markers"),
                      ((level, markers, inside[:2]), "inside"), ((level[0], markers, inside), "level")):
        with pytest.raises(RuntimeError, match=f"watershed_flood: {name} must be"):
            torch.ops.unet_fast.watershed_flood(*bad)


def test_a_border_beyond_its_limit_is_refused_not_run_for_hours(capsys):
    """Rule 4 looks at every offset within ``border`` px of every pixel: `unet-fast evaluate --border 1000` on a
    512 x 256 image ran for hours without a word. Refused above MAX_BORDER, naming --border; a model's resampling
    (in_image_pixels) stops at it, as it stops the smoothing at MAX_SMOOTHING."""
    from unet_fast import cli

    assert InstanceOptions(border=instances.MAX_BORDER).border == 64
    with pytest.raises(ValueError, match="border must be at most 64 px"):
        InstanceOptions(border=65)
    assert InstanceOptions(border=2).in_image_pixels(0.01).border == 64
    assert InstanceOptions(border=2).in_image_pixels(0.4).border == 5
    assert cli.main(["evaluate", "-m", "missing.safetensors", "--images", ".", "--labels", ".", "--border", "1000"]) == 2
    assert "argument --border: border must be at most 64 px" in capsys.readouterr().err
