"""unet_fast.image_io: lazy reading with a pixel limit, atomic writing; and the deprecated unet_fast.io."""
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_fast import image_io
from ome_zarr_files import write_ome_zarr_axes
from optional_deps import needs_zarr


def test_tiff_multipage_bigtiff_is_read_lazily(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 65535, (3, 100, 130)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, bigtiff=True, tile=(32, 32), photometric="minisblack")
    array, info = image_io.read_image(path)
    assert isinstance(array, zarr.Array)
    assert info.shape == (3, 100, 130) and info.axes == "QYX" and info.dtype == np.uint16 and info.streamable
    np.testing.assert_array_equal(array[1, 10:50, 20:33], stack[1, 10:50, 20:33])


@needs_zarr
def test_ome_tiff_and_rgb_samples_come_channels_first(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (40, 50, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.ome.tif", rgb, photometric="rgb", ome=True)
    array, info = image_io.read_image(tmp_path / "rgb.ome.tif")
    assert info.axes == "CYX" and array.shape == (3, 40, 50)
    np.testing.assert_array_equal(np.asarray(array[:, 5:9, 7:20]), np.moveaxis(rgb, -1, 0)[:, 5:9, 7:20])
    np.testing.assert_array_equal(array[2], rgb[..., 2])


@pytest.mark.parametrize("lazy", [pytest.param(True, marks=needs_zarr), False])
def test_a_channel_major_ome_tiff_comes_planes_then_channels(tmp_path, lazy):
    """OME-TIFFs stored XYZCT (tifffile axes CZYX) used to be read as ZCYX unchanged: with as many channels as
    planes, every plane passed for a channel and the result was silently wrong."""
    zcyx = np.random.default_rng(5).integers(0, 255, (3, 3, 20, 30)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "czyx.ome.tif", np.ascontiguousarray(zcyx.transpose(1, 0, 2, 3)), ome=True,
                     metadata={"axes": "CZYX"})
    array, info = image_io.read_image(tmp_path / "czyx.ome.tif", lazy=lazy)
    assert info.axes == "ZCYX" and info.shape == array.shape == (3, 3, 20, 30)
    assert image_io.image_info(tmp_path / "czyx.ome.tif") == info
    np.testing.assert_array_equal(np.asarray(array[...]), zcyx)
    np.testing.assert_array_equal(np.asarray(array[1, :, 4:9]), zcyx[1, :, 4:9])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_png_jpeg(tmp_path, suffix):
    image = (np.arange(30 * 20) % 251).astype(np.uint8).reshape(30, 20)
    image_io.write_image(tmp_path / f"a{suffix}", image)
    array, info = image_io.read_image(tmp_path / f"a{suffix}")
    assert info.shape == (30, 20) and array.shape == (30, 20)
    if suffix == ".png":
        np.testing.assert_array_equal(array, image)


@pytest.mark.parametrize("mode", ["LA", "RGB", "RGBA"])
def test_grey_saved_in_colour_is_read_as_grey_and_colour_as_channels(tmp_path, mode):
    from PIL import Image

    grey = np.random.default_rng(4).integers(0, 256, (23, 31)).astype(np.uint8)
    colours = 1 if mode == "LA" else 3
    opaque = np.full_like(grey, 255)
    bands = [grey] * colours + ([opaque] if "A" in mode else [])
    Image.fromarray(np.stack(bands, -1), mode).save(tmp_path / "grey.png")
    array, info = image_io.read_image(tmp_path / "grey.png")
    assert info.axes == "YX" and info.shape == (23, 31) and image_io.image_info(tmp_path / "grey.png") == info
    np.testing.assert_array_equal(array, grey)
    # one pixel of another colour, or one pixel not opaque: a colour image, read as its channels; an alpha
    # band that is opaque everywhere is not one of them
    for band in range(1, len(bands)):
        changed = [b.copy() for b in bands]
        changed[band][5, 7] ^= 1
        Image.fromarray(np.stack(changed, -1), mode).save(tmp_path / "colour.png")
        array, info = image_io.read_image(tmp_path / "colour.png")
        kept = changed[:colours] if "A" in mode and (changed[-1] == 255).all() else changed
        assert info.axes == "CYX" and array.shape == (len(kept), 23, 31)
        assert image_io.image_info(tmp_path / "colour.png") == info
        np.testing.assert_array_equal(array, np.stack(kept))
    # beyond the pixel limit the file is not decoded: its header is all that is read, and reading refuses it
    declared = image_io.image_info(tmp_path / "grey.png", max_pixels=100)
    assert declared.axes == "CYX" and declared.shape == (len(bands), 23, 31)
    with pytest.raises(image_io.ImageTooLargeError, match="above the limit of 100"):
        image_io.read_image(tmp_path / "grey.png", max_pixels=100)



def test_an_opaque_alpha_band_is_dropped_and_a_transparent_one_kept(tmp_path):
    """A colour RGBA PNG whose alpha is 255 everywhere (the 2018 Data Science Bowl's histology) is its RGB
    image, read as 3 channels as its RGB copy is; one pixel less than opaque keeps the 4th channel."""
    from PIL import Image

    rgb = np.random.default_rng(6).integers(0, 256, (17, 13, 3)).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    expected, expected_info = image_io.read_image(tmp_path / "rgb.png")
    array, info = image_io.read_image(tmp_path / "rgba.png")
    assert info == expected_info == image_io.image_info(tmp_path / "rgba.png") and info.shape == (3, 17, 13)
    np.testing.assert_array_equal(array, np.moveaxis(rgb, -1, 0))
    np.testing.assert_array_equal(array, expected)
    alpha[16, 12] = 254
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    array, info = image_io.read_image(tmp_path / "rgba.png")
    assert info.shape == (4, 17, 13)
    np.testing.assert_array_equal(array, np.moveaxis(np.dstack([rgb, alpha]), -1, 0))


def _png_16_bits(path, image, colour_type):
    """A 16-bit PNG (which Pillow cannot write in colour): image (H, W, bands), big-endian rows, no filter."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in image)
    header = struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("mode, colour_type, colours", [("LA", 4, 1), ("RGB", 2, 3), ("RGBA", 6, 3)])
def test_a_16_bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path, mode, colour_type, colours):
    """Pillow reads 16-bit colour PNGs as 8-bit modes, keeping each band's high byte: grey 1000 saved as LA
    was read as a grey image of 3. A 16-bit grey PNG keeps its values."""
    grey = np.random.default_rng(7).integers(0, 4096, (9, 11)).astype(np.uint16)
    opaque = [np.full_like(grey, 65535)] if "A" in mode else []
    _png_16_bits(tmp_path / "a.png", np.stack([grey] * colours + opaque, -1), colour_type)
    for read in (image_io.read_image, image_io.image_info):
        with pytest.raises(ValueError, match=f"a.png: a 16-bit colour PNG \\({mode};16B\\).*save it as a TIFF"):
            read(tmp_path / "a.png")
    _png_16_bits(tmp_path / "grey.png", grey[..., None], 0)
    array, info = image_io.read_image(tmp_path / "grey.png")
    assert info.axes == "YX" and array.dtype == np.uint16
    np.testing.assert_array_equal(array, grey)


@needs_zarr
@pytest.mark.parametrize("shape, axes", [((1, 1, 1, 20, 30), "CYX"), ((1, 2, 1, 20, 30), "CYX"),
                                         ((1, 1, 3, 20, 30), "ZCYX"), ((4, 1, 1, 20, 30), "TCYX"),
                                         ((2, 1, 3, 20, 30), "TZCYX")])
def test_ome_zarr_axes_of_length_one_are_dropped_when_there_are_several(tmp_path, shape, axes):
    """t, c, z, y, x with one time point and one plane is a 2-D image (of its channels): the axes of length
    1 other than c go, so that it can be segmented; two axes of more than one stay, for segment to refuse."""
    from unet_fast.pixel_size import read_pixel_size

    image = np.random.default_rng(5).integers(0, 4000, shape).astype(np.uint16)
    write_ome_zarr_axes(tmp_path / "a.ome.zarr", image)
    array, info = image_io.read_image(tmp_path / "a.ome.zarr")
    reordered = np.moveaxis(image, 1, 2)                                 # t, z, c, y, x: others first
    expected = reordered[tuple(slice(None) if n in axes else 0 for n in "TZ")]
    assert info.axes == axes and array.shape == info.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(array[...]), expected)
    np.testing.assert_array_equal(array[..., 3:9, 4:11], expected[..., 3:9, 4:11])
    size = read_pixel_size(tmp_path / "a.ome.zarr")
    # z's spacing only where the image has planes: t, z = 4, 1 comes as TCYX, whose T it must not describe
    assert (size.y, size.z) == (0.5, 2.0 if "Z" in axes else None)


@needs_zarr
def test_ome_zarr_axes_named_by_words_are_refused_by_name(tmp_path):
    """NGFF lets axes have any name; their letters were taken as axes ("time" as four): IndexError."""
    import zarr

    write_ome_zarr_axes(tmp_path / "a.ome.zarr", np.zeros((3, 20, 30), np.uint8), names="tyx")
    group = zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="r+")
    multiscales = group.attrs["multiscales"]
    multiscales[0]["axes"][0]["name"] = "time"
    group.attrs["multiscales"] = multiscales
    for read in (image_io.read_image, image_io.image_info):
        with pytest.raises(ValueError, match=r"a.ome.zarr: .*one letter.*\['time', 'y', 'x'\]"):
            read(tmp_path / "a.ome.zarr")


def test_without_zarr_a_tiff_is_memory_mapped_or_read_whole(tmp_path, monkeypatch):
    """zarr is declared but the GPU machines lack it: segment must still read TIFFs (it failed every one)."""
    monkeypatch.setattr(image_io, "_zarr", lambda: None)
    rng = np.random.default_rng(8)
    plain = rng.integers(0, 65535, (2, 30, 41)).astype(np.uint16)
    rgb = rng.integers(0, 255, (30, 41, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "plain.tif", plain, photometric="minisblack")
    tifffile.imwrite(tmp_path / "zlib.tif", plain, photometric="minisblack", compression="zlib")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    for name, expected, kind in (("plain", plain, np.memmap), ("zlib", plain, np.ndarray),
                                 ("rgb", np.moveaxis(rgb, -1, 0), None)):
        array, info = image_io.read_image(tmp_path / f"{name}.tif")
        assert array.shape == info.shape == expected.shape
        if kind is not None:
            assert isinstance(array, kind)
        np.testing.assert_array_equal(np.asarray(array[..., 3:9, 4:11]), expected[..., 3:9, 4:11])
        np.testing.assert_array_equal(np.asarray(array[...]), expected)
        # it still names its file, so that no output replaces it
        assert Path(getattr(getattr(array, "_array", array), "filename")) == tmp_path / f"{name}.tif"


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    image_io.write_image(path, np.zeros((200, 300), np.uint8))
    with pytest.raises(image_io.ImageTooLargeError, match="60,000 pixels.*cannot be read piece by piece"):
        image_io.read_image(path, max_pixels=1000)
    # A TIFF in small strips can be streamed: memory stays bounded, time does not, so the limit holds
    # for it too, and the message says how far to raise it
    pytest.importorskip("zarr")  # (streamed: read lazily, through zarr)
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((200, 300), np.uint8), rowsperstrip=8)
    with pytest.raises(image_io.ImageTooLargeError, match="piece by piece.*raise the limit to at least 60000"):
        image_io.read_image(tmp_path / "big.tif", max_pixels=1000)
    image_io.read_image(tmp_path / "big.tif", max_pixels=60000)


def test_pillows_own_pixel_limit_gives_way_to_ours(tmp_path, monkeypatch):
    """Pillow refuses images over 2 x its MAX_IMAGE_PIXELS (179 Mpx) with an error that names no flag; the
    limit is max_pixels (--max-pixels), and Pillow's is left as it was."""
    from PIL import Image

    path = tmp_path / "wide.png"
    image_io.write_image(path, np.arange(40 * 50, dtype=np.uint8).reshape(40, 50))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)      # 2000 px: a "decompression bomb" to Pillow
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # Pillow's warning too (between 1x and 2x its limit)
        pixels, info = image_io.read_image(path, max_pixels=2000)
    assert info.shape == (40, 50) and np.array_equal(pixels, np.arange(2000).reshape(40, 50).astype(np.uint8))
    assert Image.MAX_IMAGE_PIXELS == 10
    with pytest.raises(image_io.ImageTooLargeError, match="2,000 pixels"):
        image_io.read_image(path, max_pixels=1999)


def test_a_palette_png_is_its_colours_as_an_image_and_its_indices_as_labels(tmp_path):
    from PIL import Image

    grey = np.add.outer(np.arange(30), np.arange(20)).astype(np.uint8)
    inverted = Image.fromarray(255 - grey).convert("P")
    inverted.putpalette([255 - i for i in range(256) for _ in range(3)])     # index i shows grey 255 - i
    inverted.save(tmp_path / "grey.png")
    colour = Image.fromarray(np.zeros((30, 20), np.uint8)).convert("P")
    colour.putpalette([200, 10, 0] + [0, 0, 0] * 255)                         # index 0 is red
    colour.save(tmp_path / "red.png")
    image, info = image_io.read_image(tmp_path / "grey.png")
    assert info.axes == "YX" and np.array_equal(image, grey)
    labels, info = image_io.read_image(tmp_path / "grey.png", labels=True)
    assert info.axes == "YX" and np.array_equal(labels, 255 - grey)
    image, info = image_io.read_image(tmp_path / "red.png")
    assert info.axes == "CYX" and image.shape == (3, 30, 20) and (image[:, 0, 0] == [200, 10, 0]).all()
    with pytest.raises(image_io.ImageTooLargeError):
        image_io.read_image(tmp_path / "red.png", max_pixels=100)


def test_a_tiff_of_several_series_says_which_it_reads(tmp_path):
    plane = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tif:
        tif.write(plane)
        tif.write(np.stack([plane, plane]))
    image, info = image_io.read_image(tmp_path / "two.ome.tif", lazy=False)
    assert np.array_equal(image, plane)
    assert image_io.series_warning(tmp_path / "two.ome.tif") == (
        f"{tmp_path / 'two.ome.tif'} holds 2 image series; only the first, (12, 10), is read; the others ((2, 12, 10)) "
        f"are left out: save each series as a file of its own to segment it")
    tifffile.imwrite(tmp_path / "one.tif", plane)
    assert image_io.series_warning(tmp_path / "one.tif") is None


def test_unsupported_and_corrupt_files(tmp_path):
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match="unsupported image type"):
        image_io.read_image(tmp_path / "x.bmp")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(Exception):
        image_io.read_image(tmp_path / "bad.tif")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with image_io.atomic_path(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with image_io.atomic_path(target) as temporary:
        temporary.write_bytes(b"whole")
        assert not target.exists()
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path) == ["out.tif"]


def test_old_io_module_still_imports_with_a_warning():
    with pytest.warns(DeprecationWarning, match="unet_fast.io is deprecated: use unet_fast.normalization.Normalization"):
        from unet_fast.io import Normalization
    from unet_fast.normalization import Normalization as moved
    assert Normalization is moved
    with pytest.warns(DeprecationWarning, match="use unet_fast.image_io.read_image"):
        import unet_fast.io
        assert unet_fast.io.read_image is image_io.read_image


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_the_umask_gives(tmp_path, umask):
    """Every file written atomically gets 0666 less the umask, as open() would give it, whatever its writer
    made of the temporary file (safetensors makes it 0600)."""
    import torch

    import unet_fast

    previous = os.umask(umask)
    try:
        torch.manual_seed(0)
        written = [unet_fast.save_model(unet_fast.UNet(depth=2, base_channels=2), tmp_path / "m.safetensors"),
                   image_io.write_image(tmp_path / "a.tif", np.zeros((4, 4), np.uint8)),
                   image_io.write_bytes_atomically(tmp_path / "b.csv", b"x\n")]
    finally:
        os.umask(previous)
    assert {oct(os.stat(path).st_mode & 0o777) for path in written} == {oct(0o666 & ~umask)}


@needs_zarr
@pytest.mark.parametrize("listed", [True, False])
def test_bioformats2raw_output_is_read_as_its_first_image(tmp_path, listed):
    """bioformats2raw, the converter to OME-Zarr, writes a root group holding the file's images as 0/, 1/, ...:
    it was "not an OME-Zarr image". Its first image is read, with that image's pixel size, and the others are
    named the way a TIFF's other series are (series_warning)."""
    from ome_zarr_files import write_bioformats2raw
    from unet_fast.ome_zarr import is_ome_zarr
    from unet_fast.pixel_size import read_pixel_size

    rng = np.random.default_rng(6)
    first, second = (rng.integers(0, 4000, (1, 1, 1, 20, 30)).astype(np.uint16),
                     rng.integers(0, 4000, (1, 1, 1, 12, 14)).astype(np.uint16))
    write_bioformats2raw(tmp_path / "scan.zarr", [first, second], listed)
    array, info = image_io.read_image(tmp_path / "scan.zarr")
    assert info.axes == "CYX" and info.other_series == ((1, 1, 1, 12, 14),) and is_ome_zarr(tmp_path / "scan.zarr")
    np.testing.assert_array_equal(np.asarray(array[...]), first[0, :, 0])
    assert (read_pixel_size(tmp_path / "scan.zarr").y, read_pixel_size(tmp_path / "scan.zarr").x) == (0.5, 0.25)
    warning = image_io.series_warning(tmp_path / "scan.zarr")
    assert "holds 2 image series" in warning and "(1, 1, 1, 12, 14)" in warning and "bioformats2raw --series" in warning
    write_bioformats2raw(tmp_path / "one.zarr", [first], listed)
    assert image_io.series_warning(tmp_path / "one.zarr") is None
