"""unet_fast.data: datasets from folders / stacks / arrays, weight-map caching, training tiles."""
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from tolerances import REORDERED_FP32
from unet_fast import data, geometry
from unet_fast.data import ArrayDataset, ImageFolderDataset, RandomTiles, TiffStackDataset, split_dataset
from unet_fast.geometry import mirror_indices
from unet_fast.normalization import Normalization
from unet_fast.weights import separate_touching, unet_weight_map


def two_touching_squares(h=24, w=30):
    labels = np.zeros((h, w), np.int32)
    labels[4:12, 4:10] = 1
    labels[4:12, 10:16] = 2          # touches object 1
    labels[15:20, 20:26] = 3
    return labels


def write_folder(tmp_path, n=2, shape=(24, 30), label_ext=".png", image_ext=".tif"):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(images / f"img{i}{image_ext}", rng.integers(0, 4000, shape, dtype=np.uint16)) \
            if image_ext == ".tif" else Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(
                images / f"img{i}{image_ext}")
        mask = (two_touching_squares(*shape) > 0).astype(np.uint8) * 255
        if label_ext == ".png":
            Image.fromarray(mask).save(labels / f"img{i}{label_ext}")
        else:
            tifffile.imwrite(labels / f"img{i}{label_ext}", two_touching_squares(*shape))
    return images, labels


def test_folder_of_tiffs_with_binary_png_masks(tmp_path):
    images, labels = write_folder(tmp_path, n=3)
    ds = ImageFolderDataset(images, labels)
    assert len(ds) == 3 and ds.in_channels == 1
    sample = ds[1]
    assert sample.name == "img1"
    assert sample.image.shape == (1, 24, 30) and sample.image.dtype == np.float32
    # 0/255 mask = semantic binary: foreground as is, objects = connected components (1+2 merge)
    np.testing.assert_array_equal(sample.target, two_touching_squares() > 0)
    assert sample.instances.max() == 2
    np.testing.assert_allclose(sample.weights, unet_weight_map(sample.instances), **REORDERED_FP32)


def test_grey_images_saved_as_rgba_train_a_grey_network_and_colour_ones_a_colour_one(tmp_path):
    images, labels = write_folder(tmp_path, n=2, image_ext=".png")
    grey = {p.name: np.asarray(Image.open(p)) for p in images.iterdir()}
    grey_sample = ImageFolderDataset(images, labels)[1].image
    for name, pixels in grey.items():     # as the 2018 Data Science Bowl ships its nuclei: grey in RGBA
        Image.fromarray(np.stack([pixels] * 3 + [np.full_like(pixels, 255)], -1), "RGBA").save(images / name)
    rgba = ImageFolderDataset(images, labels)
    assert rgba.in_channels == 1
    np.testing.assert_array_equal(rgba[1].image, grey_sample)
    np.testing.assert_array_equal(data.read_image(images / "img1.png"), grey["img1.png"])
    colour = np.stack([grey["img1.png"]] * 3, -1)
    colour[3, 4, 2] ^= 1
    Image.fromarray(colour, "RGB").save(images / "img1.png")
    Image.fromarray(colour, "RGB").save(images / "img0.png")
    assert ImageFolderDataset(images, labels).in_channels == 3


def test_instance_labels_are_separated_as_in_the_paper(tmp_path):
    images, labels = write_folder(tmp_path, n=1, label_ext=".tif", image_ext=".png")
    sample = ImageFolderDataset(images, labels)[0]
    instances = two_touching_squares()
    np.testing.assert_array_equal(sample.instances, instances)
    np.testing.assert_array_equal(sample.target, separate_touching(instances))
    assert sample.target[6, 9] == 0 and sample.target[6, 10] == 0   # the contact became background
    # the weight map is the paper's on the separated objects: the border is background between two
    # objects, so it gets the large border weight (not the foreground class weight)
    _, separated = separate_touching(instances, return_instances=True)
    np.testing.assert_allclose(sample.weights, unet_weight_map(separated), **REORDERED_FP32)
    background_weight = sample.weights[0, 0]          # far from both objects: class weight only
    assert sample.weights[6, 9] > background_weight + 5 and sample.weights[6, 10] > background_weight + 5
    assert sample.weights[6, 9] > sample.weights[6, 6]   # more than the objects' own pixels


def test_weight_cache_holds_separated_weights(tmp_path):
    instances = two_touching_squares()
    fresh = ArrayDataset([np.zeros((24, 30))], [instances], cache_dir=tmp_path)[0]
    cached = ArrayDataset([np.zeros((24, 30))], [instances], cache_dir=tmp_path)[0]   # read back from disk
    assert len(list(tmp_path.glob("*.npz"))) == 1
    np.testing.assert_array_equal(cached.weights, fresh.weights)
    np.testing.assert_array_equal(cached.instances, instances)
    assert cached.weights[6, 9] > cached.weights[0, 0] + 5


def test_label_kind_flag_overrides_auto():
    instances = two_touching_squares()
    semantic = ArrayDataset([np.zeros((24, 30))], [instances], label_kind="semantic", num_classes=4)[0]
    np.testing.assert_array_equal(semantic.target, instances)        # class values kept as they are
    with pytest.raises(ValueError, match="num_classes"):
        ArrayDataset([np.zeros((24, 30))], [instances], label_kind="semantic")[0]
    with pytest.raises(ValueError, match="label_kind"):
        ArrayDataset([np.zeros((4, 4))], [np.zeros((4, 4))], label_kind="objects")


@pytest.mark.parametrize("dtype, offset", [(np.uint64, 2 ** 40), (np.uint32, 4_000_000_000), (np.float64, 2.0 ** 35)])
def test_instance_ids_beyond_int32_are_the_same_objects(dtype, offset):
    """Ids of 2^31 and more wrapped in int32: 2^40 multiples became 0 (all background), 4e9 negative (refused)."""
    instances = two_touching_squares()
    want = ArrayDataset([np.zeros((24, 30))], [instances])[0]
    big = np.where(instances > 0, instances.astype(np.float64) * 7 + offset, 0).astype(dtype)
    got = ArrayDataset([np.zeros((24, 30))], [big])[0]
    np.testing.assert_array_equal(got.target, want.target)
    np.testing.assert_array_equal(got.weights, want.weights)


def test_complex_labels_are_refused_not_cast_to_their_real_part():
    """A complex label image trained on its real part, with only a ComplexWarning, as complex images would."""
    labels = two_touching_squares().astype(np.complex64) * (1 + 1j)
    with pytest.raises(ValueError, match=r"label of 'image0' has pixels of type complex64"):
        ArrayDataset([np.zeros((24, 30))], [labels])[0]


def test_label_suffix_and_missing_label(tmp_path):
    images, labels = write_folder(tmp_path, n=2)
    (labels / "img0.png").rename(labels / "img0_mask.png")
    with pytest.raises(ValueError, match=r"no label .* img0\.tif"):
        ImageFolderDataset(images, labels)
    (labels / "img1.png").rename(labels / "img1_mask.png")
    assert len(ImageFolderDataset(images, labels, label_suffix="_mask")) == 2


def test_ambiguous_base_names_are_refused_naming_both_files(tmp_path):
    """a.tif and a.png: which one a label (or which label an image) belongs to is a guess; train and
    evaluate refuse it instead of using both, or the last one listed."""
    from unet_fast.data import NameMatchError, matching_files

    images, labels = write_folder(tmp_path, n=2)
    (images / "img0.png").write_bytes((labels / "img0.png").read_bytes())
    with pytest.raises(NameMatchError, match=r"img0\.png.*img0\.tif.*same base name") as caught:
        matching_files(images, labels)
    assert caught.value.argument == "images"
    (images / "img0.png").unlink()
    (labels / "img1.tif").write_bytes((images / "img1.tif").read_bytes())
    with pytest.raises(NameMatchError, match=r"img1\.png.*img1\.tif") as caught:
        ImageFolderDataset(images, labels)
    assert caught.value.argument == "labels"
    (labels / "img1.tif").rename(labels / "unused.tif")
    (labels / "unused.png").write_bytes((labels / "img1.png").read_bytes())   # matched by no image: harmless
    assert [image.name for image, _ in matching_files(images, labels)] == ["img0.tif", "img1.tif"]


def test_hidden_files_in_the_folders_are_skipped(tmp_path):
    """macOS's AppleDouble ._x.tif files (resource forks copied to USB disks and shares) are no images: train
    and evaluate skip names starting with "." as segment does, instead of failing on them (an image without a
    label, or a label that cannot be read)."""
    from unet_fast.data import matching_files

    images, labels = write_folder(tmp_path, n=2)
    (images / "._img0.tif").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (labels / "._img1.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    assert [(image.name, label.name) for image, label in matching_files(images, labels)] == \
        [("img0.tif", "img0.png"), ("img1.tif", "img1.png")]


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderDataset(tmp_path / "empty", tmp_path / "labels")
    with pytest.raises(FileNotFoundError, match="images_dir"):
        ImageFolderDataset(tmp_path / "nowhere", tmp_path / "labels")


def test_mismatched_shapes_are_refused(tmp_path):
    images, labels = write_folder(tmp_path, n=1)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(labels / "img0.png")
    with pytest.raises(ValueError, match=r"img0.* \(24, 30\) pixels but its label is \(10, 10\)"):
        ImageFolderDataset(images, labels)[0]


def test_unreadable_image_is_named(tmp_path):
    images, labels = write_folder(tmp_path, n=1)
    (images / "img0.tif").write_bytes(b"not a tiff")
    with pytest.raises(ValueError, match="img0.tif"):
        ImageFolderDataset(images, labels)[0]


def test_tiff_stacks_isbi_style(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 255, (3, 24, 30), dtype=np.uint8)
    masks = np.stack([(two_touching_squares() > 0) * 255] * 3).astype(np.uint8)
    tifffile.imwrite(tmp_path / "train-volume.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", masks, photometric="minisblack")
    ds = TiffStackDataset(tmp_path / "train-volume.tif", tmp_path / "train-labels.tif", indices=[2, 0])
    assert len(ds) == 2 and ds[0].name == "train-volume[2]"
    np.testing.assert_allclose(ds[0].image[0], Normalization()(stack[2]), **REORDERED_FP32)
    np.testing.assert_array_equal(ds[1].target, masks[0] > 0)
    tifffile.imwrite(tmp_path / "short.tif", masks[:2], photometric="minisblack")
    with pytest.raises(ValueError, match="must match"):
        TiffStackDataset(tmp_path / "train-volume.tif", tmp_path / "short.tif")
    with pytest.raises(ValueError, match="indices"):
        TiffStackDataset(tmp_path / "train-volume.tif", tmp_path / "train-labels.tif", indices=[3])


def test_tiff_stacks_of_colour_pages_are_read_by_their_axes(tmp_path):
    """RGB pages (samples stored last): each page is a (3, H, W) image, as the same arrays given channels first
    train; one RGB image is one page (its (H, W, 3) was read as H pages of (W, 3))."""
    rng = np.random.default_rng(2)
    colour = rng.integers(0, 255, (2, 24, 30, 3), dtype=np.uint8)
    masks = np.stack([two_touching_squares() > 0] * 2).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb-stack.tif", colour, photometric="rgb")
    tifffile.imwrite(tmp_path / "rgb-one.tif", colour[1], photometric="rgb")
    tifffile.imwrite(tmp_path / "labels.tif", masks, photometric="minisblack")
    tifffile.imwrite(tmp_path / "label-one.tif", masks[1], photometric="minisblack")
    expected = ArrayDataset([np.moveaxis(page, -1, 0) for page in colour], list(masks))
    stack = TiffStackDataset(tmp_path / "rgb-stack.tif", tmp_path / "labels.tif")
    one = TiffStackDataset(tmp_path / "rgb-one.tif", tmp_path / "label-one.tif")
    assert len(stack) == 2 and len(one) == 1
    for got, want in ((stack[0], expected[0]), (stack[1], expected[1]), (one[0], expected[1])):
        assert got.image.shape == (3, 24, 30)
        np.testing.assert_array_equal(got.image, want.image)
        np.testing.assert_array_equal(got.target, want.target)
    with pytest.raises(ValueError, match="labels_path .* must be a stack of 2-D pages"):
        TiffStackDataset(tmp_path / "rgb-stack.tif", tmp_path / "rgb-stack.tif")


def test_colour_coded_labels_are_refused_saying_how_to_convert_them(tmp_path):
    """Labels saved as colours (one per object), in training and evaluate alike: refused as no 2-D image, with the
    conversion (it said only "must be a 2-D image, got shape (3, H, W)")."""
    from PIL import Image

    from unet_fast.checks import BadArgument
    from unet_fast.evaluation import check_labelled, labelled_files

    objects = two_touching_squares()
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255]], np.uint8)[objects % 3]
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", (objects > 0).astype(np.uint8) * 200)
    Image.fromarray(colours).save(tmp_path / "labels" / "a.png")
    with pytest.raises(ValueError, match=r"shape \(3, .*colour-coded labels .* must be converted first"):
        ImageFolderDataset(tmp_path / "images", tmp_path / "labels")[0]
    with pytest.raises(BadArgument, match=r"shape \(3, .*colour-coded labels .* must be converted first"):
        check_labelled(labelled_files(tmp_path / "images", tmp_path / "labels"), in_channels=1)
    converted = np.unique(colours.reshape(-1, 3), axis=0, return_inverse=True)[1].reshape(objects.shape)
    assert len(np.unique(converted)) == len(np.unique(objects % 3)) and (converted[objects == 0] == 0).all()


def test_weight_maps_are_computed_once_and_cached_on_disk(tmp_path, monkeypatch):
    calls = []
    real = data.unet_weight_map
    monkeypatch.setattr(data, "unet_weight_map", lambda *a, **k: calls.append(1) or real(*a, **k))
    images, labels = [np.zeros((24, 30))] * 3, [two_touching_squares(), two_touching_squares()[::-1].copy(),
                                                 two_touching_squares()]
    ds = ArrayDataset(images, labels, cache_dir=tmp_path / "cache")
    first = ds[0].weights
    ds[0], ds[0], ds[1]
    assert len(calls) == 2                                  # once per label image
    ds[2]
    assert len(calls) == 2                                  # same labels as image 0: same key, from disk
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = ArrayDataset(images, labels, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again[0].weights, first)
    assert len(calls) == 2                                  # read from disk
    other = ArrayDataset(images, labels, cache_dir=tmp_path / "cache", w0=5.0)
    other[0]
    assert len(calls) == 3                                  # other parameters, other key
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_split_dataset_is_disjoint_and_seeded():
    ds = ArrayDataset([np.zeros((8, 8))] * 5, [np.zeros((8, 8), np.int32)] * 5, names=list("abcde"))
    train, val = split_dataset(ds, 0.4, seed=3)
    names = sorted([train[i].name for i in range(len(train))] + [val[i].name for i in range(len(val))])
    assert names == list("abcde") and len(val) == 2
    assert [val[i].name for i in range(2)] == [split_dataset(ds, 0.4, seed=3)[1][i].name for i in range(2)]
    assert split_dataset(ds, 0.0)[1] is None
    with pytest.raises(ValueError, match="val_fraction"):
        split_dataset(ds, 1.0)


def identity_dataset(h=40, w=50):
    """Image equal to its class target, so crops can be checked against each other."""
    target = np.random.default_rng(0).integers(0, 2, (h, w))
    return ArrayDataset([target.astype(np.float32)], [target], label_kind="semantic",
                        normalization=Normalization(mode="none")), target


def test_random_tiles_align_input_and_centred_target():
    ds, target = identity_dataset()
    tiles = RandomTiles(ds, 44, depth=2, tiles_per_epoch=6, seed=1)
    m = geometry.output_size(44, 2)
    margin = (44 - m) // 2
    for i in range(len(tiles)):
        image, tgt, weights = tiles[i]
        assert image.shape == (1, 44, 44) and tgt.shape == (m, m) and weights.shape == (m, m)
        assert tgt.dtype == torch.int64 and weights.dtype == torch.float32
        torch.testing.assert_close(image[0, margin:margin + m, margin:margin + m], tgt.float())
        # the target window lies inside the image: it is a crop of the true target
        windows = np.lib.stride_tricks.sliding_window_view(target, (m, m))
        assert (windows == tgt.numpy()).all(axis=(-2, -1)).any()


def test_random_tiles_mirror_images_smaller_than_a_tile():
    ds, target = identity_dataset(10, 12)             # smaller than the output (20 x 20)
    image, tgt, _ = RandomTiles(ds, 60, depth=3, tiles_per_epoch=1)[0]
    rows, cols = mirror_indices(-5, -5 + 20, 10), mirror_indices(-4, -4 + 20, 12)   # image centred in the window
    np.testing.assert_array_equal(tgt.numpy(), target[np.ix_(rows, cols)])
    rows, cols = mirror_indices(-25, -25 + 60, 10), mirror_indices(-24, -24 + 60, 12)
    np.testing.assert_array_equal(image[0].numpy(), target[np.ix_(rows, cols)])


def test_random_tiles_are_a_function_of_seed_epoch_and_index():
    ds, _ = identity_dataset()
    tiles = RandomTiles(ds, 44, depth=2, tiles_per_epoch=3, seed=5, augment=data.default_augmentation())
    a = [tiles[i] for i in range(3)]
    for i in reversed(range(3)):
        for s, t in zip(tiles[i], a[i]):
            assert torch.equal(s, t)
    tiles.set_epoch(1)
    assert not torch.equal(tiles[0][0], a[0][0])
    tiles.set_epoch(0)
    assert torch.equal(tiles[0][0], a[0][0])


def test_random_tiles_default_count_and_bad_size():
    ds, _ = identity_dataset(40, 50)
    tiles = RandomTiles(ds, 44, depth=2)              # output 36: 2 x 2 tiles cover 40 x 50
    assert len(tiles) == 4
    with pytest.raises(ValueError, match="tile_size: tile size 45.*44 or 46"):
        RandomTiles(ds, 45, depth=2)


def test_default_augmentation_keeps_image_and_labels_aligned():
    ds, _ = identity_dataset()
    aug = data.default_augmentation()
    aug.transforms = [t for t in aug.transforms if type(t).__name__ != "RandomGreyValue"]
    tiles = RandomTiles(ds, 44, depth=2, tiles_per_epoch=4, augment=aug, seed=2)
    m = geometry.output_size(44, 2)
    margin = (44 - m) // 2
    agree = []
    for i in range(len(tiles)):
        image, tgt, weights = tiles[i]
        assert set(tgt.unique().tolist()) <= {0, 1} and torch.isfinite(weights).all()
        # bicubic image vs nearest labels: equal where the image is clearly 0 or 1
        centre = image[0, margin:margin + m, margin:margin + m]
        clear = (centre - 0.5).abs() > 0.45
        agree.append((centre[clear].round() == tgt[clear].float()).float().mean().item())
    assert min(agree) > 0.97


def test_synthetic_nuclei_reexported():
    images, labels = data.synthetic_nuclei(1, 32, seed=0)
    assert images.shape == labels.shape == (1, 32, 32)


def test_a_stack_in_a_folder_of_labelled_images_is_refused_not_read_as_channels(tmp_path):
    """A (Z, H, W) ImageJ stack trained a network of Z input channels, which segment then refused on it."""
    images, labels = data.synthetic_nuclei(1, 32, seed=0)
    for kind in ("im", "lb"):
        (tmp_path / kind).mkdir()
    tifffile.imwrite(tmp_path / "im" / "a.tif", np.stack([images[0]] * 5).astype(np.float32), imagej=True,
                     metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "lb" / "a.tif", labels[0].astype(np.uint16))
    with pytest.raises(ValueError, match=r"is a stack \(axes ZYX, shape \(5, 32, 32\)\)"):
        ImageFolderDataset(tmp_path / "im", tmp_path / "lb")[0]


def test_a_stack_declaring_more_pixels_than_memory_holds_is_refused_before_it_is_read(tmp_path):
    """A stack is read whole: a file that declares 1.8 gigapixels (sparse, written in no time) is refused from
    its header, for training and for evaluate, instead of exhausting memory."""
    from unet_fast import cli
    from unet_fast.image_io import ImageTooLargeError

    tifffile.imwrite(tmp_path / "huge.tif", shape=(3, 30000, 20000), dtype=np.uint8, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", np.zeros((3, 30, 20), np.uint16), photometric="minisblack")
    with pytest.raises(ImageTooLargeError, match="declares 1,800,000,000 pixels"):
        TiffStackDataset(tmp_path / "huge.tif", tmp_path / "labels.tif")
    model = tmp_path / "m.safetensors"
    import unet_fast

    unet_fast.save_model(unet_fast.UNet(depth=2, base_channels=2), model)
    assert cli.main(["evaluate", "-m", str(model), "--images", str(tmp_path / "huge.tif"), "--labels",
                     str(tmp_path / "labels.tif"), "-o", str(tmp_path / "ev"), "--no-progress"]) == 2


def test_two_ids_without_background_train_as_two_objects():
    """Two touching cells filling a label image (ids 1 and 2, no 0): "auto" takes them as instances, so the
    target separates them by the paper's background border and the weight map weights it; a {0, v} mask and a
    label image of one value stay binary masks."""
    label = np.ones((12, 14), np.int32)
    label[:, 7:] = 2
    sample = ArrayDataset([np.zeros((12, 14))], [label])[0]
    assert len(np.unique(sample.instances)) == 2 and sample.target[:, 7].max() == 0 and sample.target[:, 6].max() == 0
    assert sample.target[:, :6].min() == 1 and sample.weights[:, 6].min() > sample.weights[:, 0].max()
    mask = ArrayDataset([np.zeros((12, 14))], [np.where(label == 2, 255, 0)])[0]
    np.testing.assert_array_equal(mask.target, label == 2)
    whole = ArrayDataset([np.zeros((12, 14))], [np.full((12, 14), 255)])[0]
    np.testing.assert_array_equal(whole.target, np.ones((12, 14)))
