"""unet_fast.sinks: results written as tiles finish, into arrays or streamed files committed atomically."""
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_fast import sinks


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
@pytest.mark.parametrize("shape, channels", [((300, 517), False), ((2, 130, 70), False),
                                              ((3, 260, 300), True), ((2, 2, 130, 70), True)])
def test_streaming_writers_accept_blocks_in_tile_order(tmp_path, suffix, shape, channels):
    if suffix == ".zarr":
        pytest.importorskip("zarr")
    rng = np.random.default_rng(4)
    image = rng.integers(0, 255, shape).astype(np.uint8)
    writer = sinks.open_streaming_writer(tmp_path / f"o{suffix}", shape, np.uint8, channels=channels)
    planes = shape[0] if len(shape) - channels == 3 else 1
    for p in range(planes):
        plane = image[p] if planes > 1 or len(shape) - channels == 3 else image
        for y in range(0, shape[-2], 100):
            for x in range(0, shape[-1], 90):
                writer.write(p, y, x, plane[..., y:y + 100, x:x + 90])
        assert not (tmp_path / f"o{suffix}").exists()
    writer.close()
    if suffix == ".tif":
        back = tifffile.imread(tmp_path / "o.tif")
        back = np.moveaxis(back, -1, -3) if channels else back
    else:
        back = __import__("zarr").open_group(str(tmp_path / "o.zarr"), mode="r")["0"][...]
        back = np.moveaxis(back, 0, 1) if channels and len(shape) == 4 else back   # stored c, z, y, x
    np.testing.assert_array_equal(back, image)
    assert sorted(os.listdir(tmp_path)) == [f"o{suffix}"]


@pytest.mark.parametrize("shape, channels", [((2, 40, 30), False), ((3, 40, 30), True), ((2, 3, 40, 30), True)])
def test_ome_zarr_axes_are_ordered_by_type_as_ngff_requires(tmp_path, shape, channels):
    """NGFF 0.4: time, then channel, then space axes; a stack of class probabilities was written z, c, y, x,
    which ome-zarr-py (napari's reader) refuses."""
    pytest.importorskip("zarr")
    from unet_fast import image_io

    image = np.random.default_rng(5).random(shape, dtype=np.float32)
    writer = sinks.open_streaming_writer(tmp_path / "o.ome.zarr", shape, np.float32, channels=channels)
    for p in range(shape[0] if len(shape) - channels == 3 else 1):
        writer.write(p, 0, 0, image[p] if len(shape) - channels == 3 else image)
    path = writer.close()
    [multiscale] = __import__("zarr").open_group(str(path), mode="r").attrs["multiscales"]
    types = [axis["type"] for axis in multiscale["axes"]]
    assert types == sorted(types, key=["time", "channel", "space"].index)
    assert types.count("space") == len(shape) - channels
    array, info = image_io.read_image(path)
    np.testing.assert_array_equal(np.asarray(array[...]), image)     # read back as written: Z, K, H, W


def test_ome_zarr_chunks_are_nested_as_ngff_requires(tmp_path):
    """NGFF (since 0.2) keeps chunks in nested folders, 0/c/z/y/x: "/" is its only dimension separator; zarr
    writes format 2 arrays with "." (0/c.z.y.x files) unless told."""
    pytest.importorskip("zarr")
    shape = (2, 3, 40, 30)
    writer = sinks.open_streaming_writer(tmp_path / "o.ome.zarr", shape, np.uint8, channels=True)
    for p in range(2):
        writer.write(p, 0, 0, np.full(shape[1:], p, np.uint8))
    path = writer.close()
    assert __import__("json").loads((path / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    assert (path / "0" / "0" / "1" / "0" / "0").is_file()      # the classes' chunk (c), plane 1 (z), y, x
    assert __import__("zarr").open_group(str(path), mode="r")["0"][2, 1].max() == 1


@pytest.mark.parametrize("shape", [(200, 20, 30), (2, 200, 20, 30)])
def test_ome_zarr_chunks_of_many_classes_stay_small(tmp_path, shape, monkeypatch):
    """A chunk held every class in 512 x 512 pixels, however small the image (format 2 stores edge chunks whole):
    200 classes of float32 probabilities made 200 MiB chunks (1000 classes, 1 GiB), each read whole by a reader
    that shows one class of one tile."""
    zarr = pytest.importorskip("zarr")
    monkeypatch.setattr(sinks, "MAX_CHUNK_BYTES", 64 * 20 * 30 * 4)      # 64 classes of this image a chunk
    image = np.random.default_rng(6).random(shape, dtype=np.float32)
    writer = sinks.open_streaming_writer(tmp_path / "p.ome.zarr", shape, np.float32, channels=True)
    for p in range(shape[0] if len(shape) == 4 else 1):
        writer.write(p, 0, 0, image[p] if len(shape) == 4 else image)
    array = zarr.open_group(str(writer.close()), mode="r")["0"]
    assert array.chunks == (64, 20, 30) if len(shape) == 3 else (64, 1, 20, 30)
    back = array[...]
    np.testing.assert_array_equal(np.moveaxis(back, 0, 1) if len(shape) == 4 else back, image)


@pytest.mark.parametrize("shape, channels", [((40, 30), False), ((3, 40, 30), False), ((2, 3, 40, 30), True),
                                             ((3, 40, 30), True)])
def test_a_tiff_records_the_translation_as_every_planes_position(tmp_path, shape, channels):
    """OME-XML Plane PositionX/Y/Z in the pixel size's unit, a stack's planes one z step apart (the class samples
    of probabilities are no planes); an image at 0, 0, 0 or of no known position writes none."""
    import xml.etree.ElementTree as ElementTree

    from unet_fast.pixel_size import PixelSize

    planes = shape[0] if len(shape) - channels == 3 else 1
    at = PixelSize(40.0, 20.0, "nanometer", z=250.0 if planes > 1 else None, translation=(-500.0, 120.0, 60.5))
    for name, pixel_size in (("at.tif", at), ("origin.tif", PixelSize(40.0, 20.0, "nanometer", z=at.z))):
        writer = sinks.open_streaming_writer(tmp_path / name, shape, np.uint8, channels=channels,
                                             pixel_size=pixel_size)
        for p in range(planes):
            writer.write(p, 0, 0, np.zeros(shape[-3:] if channels else shape[-2:], np.uint8))
        with tifffile.TiffFile(writer.close()) as tif:
            found = [element.attrib for element in ElementTree.fromstring(tif.ome_metadata).iter()
                     if element.tag.endswith("}Plane")]
        if pixel_size is at:
            assert [(int(f["TheZ"]), float(f["PositionZ"]), float(f["PositionY"]), float(f["PositionX"]))
                    for f in found] == [(k, -500.0 + 250.0 * k, 120.0, 60.5) for k in range(planes)]
            assert {f[f"Position{axis}Unit"] for f in found for axis in "XYZ"} == {"nm"}
        else:
            assert not any(key.startswith("Position") for f in found for key in f)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_every_file_of_a_result_is_on_the_disk_before_it_takes_its_name(tmp_path, monkeypatch, suffix):
    """A result is renamed into place only once its data is flushed to the disk (fsync): a machine that crashed
    (a power cut, a node lost) after the rename could leave an output of that name with no data (empty, chunks
    missing), which segment --continue keeps as finished. Nothing was flushed."""
    if suffix == ".zarr":
        pytest.importorskip("zarr")
    synced, committed = set(), []
    fsync = os.fsync

    def record_fsync(fd):
        synced.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        fsync(fd)

    def record_commit(temporary, path):
        files = [temporary] if not temporary.is_dir() else [Path(folder, name) for folder, _, names in
                                                            os.walk(temporary) for name in names]
        committed.append([os.path.realpath(f) in synced for f in files])
        commit(temporary, path)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd to tell a descriptor's file")
    commit = sinks.commit
    monkeypatch.setattr(sinks.os, "fsync", record_fsync)
    monkeypatch.setattr(sinks, "commit", record_commit)
    writer = sinks.open_streaming_writer(tmp_path / f"o{suffix}", (2, 40, 30), np.uint8, channels=False)
    for plane in range(2):
        writer.write(plane, 0, 0, np.full((40, 30), plane, np.uint8))
    writer.close()
    assert len(committed) == 1 and committed[0] and all(committed[0])


def test_streaming_writer_refuses_an_incomplete_image(tmp_path):
    writer = sinks.open_streaming_writer(tmp_path / "o.tif", (64, 64), np.uint8)
    writer.write(0, 0, 0, np.ones((32, 64), np.uint8))
    with pytest.raises(RuntimeError, match="before every pixel"):
        writer.close()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("output", ["labels", "instances"])
def test_an_out_path_that_is_a_folder_fails_before_any_work(tmp_path, output, monkeypatch):
    """predict_tiled(out=<a folder named x.tif>) used to fail with IsADirectoryError after all the work."""
    import torch

    import unet_fast
    from unet_fast import inference
    from unet_fast.checks import BadArgument

    (tmp_path / "x.tif").mkdir()
    (tmp_path / "file.zarr").write_text("")
    model = unet_fast.UNet(depth=2, base_channels=2)
    monkeypatch.setattr(inference, "plan_tiles", lambda *a, **k: pytest.fail("planned work for a bad out"))
    for out, text in ((tmp_path / "x.tif", "is a folder"), (tmp_path / "file.zarr", "is a file"),
                      (tmp_path / "x.png", "must end in")):
        with pytest.raises(BadArgument, match=text) as caught:
            inference.predict_tiled(model, torch.zeros(1, 40, 40), output=output, out=out, progress=False)
        assert caught.value.argument == "out"
    with pytest.raises(BadArgument, match="is a folder"):
        sinks.open_sink(tmp_path / "x.tif", (8, 8), torch.uint8, stacked=False, channels=False)
    assert sorted(os.listdir(tmp_path)) == ["file.zarr", "x.tif"] and os.listdir(tmp_path / "x.tif") == []


def _failing_band_writer(tmp_path, monkeypatch, slow: float):
    """An OME-Zarr writer whose first band fails on a full disk while its other chunks take ``slow`` s each."""
    import errno
    import threading
    import time

    import zarr.storage._local as local_store

    put, full = local_store._put, threading.Event()

    def put_on_a_filling_disk(path, value, *args, **kwargs):
        chunk = path.parent.parent.name == "0" and path.name.isdigit()     # array 0's chunks: 0/row/column (NGFF)
        if chunk and path.parts[-2:] == ("0", "1"):
            full.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        if chunk:
            full.wait(5)
            time.sleep(slow)
        return put(path, value, *args, **kwargs)

    monkeypatch.setattr(local_store, "_put", put_on_a_filling_disk)
    writer = sinks.open_streaming_writer(tmp_path / "o.ome.zarr", (100, 2600), np.uint8)
    with pytest.raises(OSError, match="No space left"):
        writer.write(0, 0, 0, np.ones((100, 2600), np.uint8))
    return writer


def test_a_failed_ome_zarr_write_leaves_nothing_once_aborted(tmp_path, monkeypatch):
    """A disk that fills up under one chunk of a band: the write fails, and abort() removes the hidden
    temporary for good. Before, the band's other chunks were still being written (zarr writes a call's
    chunks concurrently) when abort() removed it, and re-created it after."""
    pytest.importorskip("zarr")
    import time

    writer = _failing_band_writer(tmp_path, monkeypatch, slow=0.3)
    writer.abort()
    time.sleep(0.6)                      # as long as any chunk write could still take
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError, match="the writer was aborted"):   # and nothing is written after it
        writer.array[0:10, 0:10] = 1
    assert os.listdir(tmp_path) == []


def test_a_signal_while_an_abort_waits_for_the_writes_still_removes_the_folder(tmp_path, monkeypatch):
    """A SIGTERM (SystemExit) or Ctrl-C that lands while abort() waits for the chunks under way: the wait
    goes on, the folder is removed, and then the signal's exception is raised."""
    pytest.importorskip("zarr")
    import time

    writer = _failing_band_writer(tmp_path, monkeypatch, slow=0.3)
    stop_writes, calls = writer._store.stop_writes, []

    def interrupted_once():
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit(143)
        return stop_writes()

    monkeypatch.setattr(writer._store, "stop_writes", interrupted_once)
    with pytest.raises(SystemExit):
        writer.abort()
    time.sleep(0.6)
    assert len(calls) == 2 and os.listdir(tmp_path) == []


def test_an_abort_that_outlasts_the_wait_says_the_folder_may_remain(tmp_path, monkeypatch, caplog):
    pytest.importorskip("zarr")
    import time

    writer = _failing_band_writer(tmp_path, monkeypatch, slow=0.5)
    monkeypatch.setattr(sinks, "STOP_WRITES_TIMEOUT", 0.01)
    with caplog.at_level("WARNING", logger="unet_fast.sinks"):
        writer.abort()
    assert "zarr writes still under way" in caplog.text and writer.temporary.name in caplog.text
    time.sleep(0.8)                      # the late writes end; remove what they left
    sinks.discard(writer.temporary)


def test_attributes_are_written_through_the_stoppable_store(tmp_path):
    """set_attributes (e.g. a label image's "colors") goes through the store an abort stops."""
    pytest.importorskip("zarr")
    writer = sinks.open_streaming_writer(tmp_path / "o.ome.zarr", (10, 10), np.uint8)
    writer.set_attributes({"image-label": {"version": "0.4"}})
    writer.abort()
    with pytest.raises(RuntimeError, match="the writer was aborted"):
        writer.set_attributes({"more": 1})
    assert os.listdir(tmp_path) == []


# ---- OME-Zarr pyramids: levels written while level 0 streams in


def _write_in_tiles(writer, image, shape, channels, tile=(7, 9)):
    planes = shape[0] if len(shape) - channels == 3 else 1
    for p in range(planes):
        plane = image[p] if len(shape) - channels == 3 else image
        for y in range(0, shape[-2], tile[0]):
            for x in range(0, shape[-1], tile[1]):
                writer.write(p, y, x, plane[..., y:y + tile[0], x:x + tile[1]])
    return writer.close()


def _block_means(level):
    """The mean of each 2 x 2 block of y, x, of the pixels it has (an odd last row or column: 1 or 2), in float64."""
    height, width = level.shape[-2:]
    means = np.empty(level.shape[:-2] + (-(-height // 2), -(-width // 2)))
    for i in range(means.shape[-2]):
        for j in range(means.shape[-1]):
            means[..., i, j] = level[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(np.float64).mean(axis=(-2, -1))
    return means


@pytest.mark.parametrize("shape, channels, dtype", [
    ((37, 50), False, np.uint16),            # instances: odd height, even width
    ((2, 36, 21), False, np.uint8),          # a stack of labels: even height, odd width
    ((3, 37, 21), True, np.float32),         # probabilities of 3 classes
    ((2, 2, 36, 22), True, np.float16),      # a stack of them (stored c, z, y, x), even sizes
])
def test_ome_zarr_pyramid_levels_are_picked_pixels_or_block_means(tmp_path, monkeypatch, shape, channels, dtype):
    """Level k halves y and x of level k - 1 (rounding up), never z or the classes: ids and classes by the top-left
    pixel of each 2 x 2 block (level 0[::2**k, ::2**k]), probabilities by the block's mean (of the pixels an edge
    block has); written from blocks that arrive in tile order, in bands of 5 rows."""
    zarr = pytest.importorskip("zarr")
    import torch
    from tolerances import TOLERANCES

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 8)
    rng = np.random.default_rng(7)
    image = (rng.random(shape) if np.dtype(dtype).kind == "f" else rng.integers(0, 200, shape)).astype(dtype)
    path = _write_in_tiles(sinks.StreamingZarrWriter(tmp_path / "o.ome.zarr", shape, dtype, channels=channels,
                                                     chunk=5), image, shape, channels)
    group = zarr.open_group(str(path), mode="r")
    datasets = group.attrs["multiscales"][0]["datasets"]
    stored = np.moveaxis(image, 0, 1) if channels and len(shape) == 4 else image
    sizes = [stored.shape[-2:]]
    while max(sizes[-1]) > 8:
        sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    assert [d["path"] for d in datasets] == [str(k) for k in range(len(sizes))] and len(sizes) == 4
    want = stored
    for k, size in enumerate(sizes):
        level = group[str(k)][...]
        assert level.shape == stored.shape[:-2] + size and level.dtype == dtype
        if np.dtype(dtype).kind == "f":
            want = stored if k == 0 else _block_means(want).astype(dtype)
            rtol, atol = TOLERANCES[{np.float32: torch.float32, np.float16: torch.float16}[dtype]]
            np.testing.assert_allclose(level, want, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(level, stored[..., ::2 ** k, ::2 ** k])
    assert sorted(os.listdir(tmp_path)) == ["o.ome.zarr"]


@pytest.mark.parametrize("dtype, kind", [(np.uint8, "nearest"), (np.float32, "mean")])
def test_ome_zarr_pyramid_metadata_lists_every_level_with_its_scale_and_translation(tmp_path, monkeypatch, dtype,
                                                                                      kind):
    """NGFF 0.4: datasets from the highest resolution down, each a scale (level 0's times 2**k in y and x) then a
    translation; a mean's pixel centre lies at its block's centre (+ (2**k - 1) / 2 pixel of level 0), a picked
    pixel's at the picked (top-left) pixel's (translation unchanged); "type" and "metadata" name the method."""
    zarr = pytest.importorskip("zarr")
    from unet_fast.pixel_size import PixelSize

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 10)
    shape = (3, 2, 30, 41)                                   # z, classes, y, x: stored c, z, y, x
    for translation in ((-4.0, 3.0, 7.5), None):
        size = PixelSize(0.5, 0.25, "micrometer", z=2.0, translation=translation)
        path = tmp_path / f"{translation is None}.ome.zarr"
        _write_in_tiles(sinks.StreamingZarrWriter(path, shape, dtype, channels=True, chunk=8, pixel_size=size),
                        np.zeros(shape, dtype), shape, True)
        [multiscale] = zarr.open_group(str(path), mode="r").attrs["multiscales"]
        assert multiscale["version"] == "0.4" and [a["name"] for a in multiscale["axes"]] == ["c", "z", "y", "x"]
        assert multiscale["type"] == kind and set(multiscale["metadata"]) == {"description", "method", "version"}
        y0, x0 = (3.0, 7.5) if translation else (0.0, 0.0)
        for k, dataset in enumerate(multiscale["datasets"]):
            shift = (2 ** k - 1) / 2 if kind == "mean" else 0.0
            want = [{"type": "scale", "scale": [1.0, 2.0, 0.5 * 2 ** k, 0.25 * 2 ** k]}]
            if translation or shift:
                want.append({"type": "translation",
                             "translation": [0.0, -4.0 if translation else 0.0, y0 + 0.5 * shift, x0 + 0.25 * shift]})
            assert dataset == {"path": str(k), "coordinateTransformations": want}
        assert len(multiscale["datasets"]) == 4                          # x: 41, 21, 11, 6
        assert zarr.open_group(str(path), mode="r")["3"].shape == (2, 3, 4, 6)


def test_pyramid_levels_stop_at_a_side_of_1024():
    assert sinks.pyramid_sizes(1024, 700) == [(1024, 700)]                 # a small image: level 0 alone
    assert sinks.pyramid_sizes(1025, 3) == [(1025, 3), (513, 2)]
    assert sinks.pyramid_sizes(50_000, 50_000)[-1] == (782, 782) and len(sinks.pyramid_sizes(50_000, 50_000)) == 7


def test_a_small_ome_zarr_result_has_one_level(tmp_path):
    """Up to 1024 px a side: level 0 alone, as before; a pixel more: a level of half."""
    zarr = pytest.importorskip("zarr")
    for shape, paths in (((1024, 300), ["0"]), ((2, 300, 1024), ["0"]), ((1025, 3), ["0", "1"])):
        writer = sinks.open_streaming_writer(tmp_path / f"{shape}.ome.zarr", shape, np.float32, channels=False)
        for p in range(shape[0] if len(shape) == 3 else 1):
            writer.write(p, 0, 0, np.ones(shape[-2:], np.float32))
        group = zarr.open_group(str(writer.close()), mode="r")
        [multiscale] = group.attrs["multiscales"]
        assert [d["path"] for d in multiscale["datasets"]] == paths and ("type" in multiscale) == (len(paths) > 1)
    assert group["1"].shape == (513, 2) and np.all(group["1"][...] == 1)


def _held_bytes(writer) -> int:
    """The bytes of the numpy arrays a writer holds (through its own objects; zarr's arrays are on disk)."""
    seen, bases, stack = set(), {}, [writer]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            base = item
            while isinstance(base.base, np.ndarray):
                base = base.base
            bases[id(base)] = base.nbytes
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif type(item).__module__.startswith("unet_fast") and hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return sum(bases.values())


def test_an_ome_zarr_pyramid_is_written_in_bands_never_holding_a_level(tmp_path, monkeypatch):
    """Each level is written as the bands of the level above come: between writes the writer holds less than
    two bands of level 0 however tall the image, and every level of more than one band has rows on disk while
    level 0 is three quarters written."""
    zarr = pytest.importorskip("zarr")
    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 16)
    shape, band = (1024, 64), 16
    image = np.random.default_rng(8).random(shape, dtype=np.float32)
    writer = sinks.StreamingZarrWriter(tmp_path / "o.ome.zarr", shape, np.float32, chunk=band)
    assert len(writer.levels) == 7                                    # 1024, 512, ..., 16 rows
    held = []
    for y in range(0, shape[0], 24):                                  # 24 rows: bands end mid-write
        writer.write(0, y, 0, image[y:y + 24])
        held.append(_held_bytes(writer))
        if y == 768:
            group = zarr.open_group(str(writer.temporary), mode="r")
            assert all(np.any(group[str(k)][:1] != 0) for k in range(6))   # level 6 is one band: 16 rows
    assert max(held) < 2 * band * shape[1] * 4 and max(held) < image.nbytes / 30
    levels = zarr.open_group(str(writer.close()), mode="r")
    np.testing.assert_allclose(levels["6"][...], image.reshape(16, 64, 1, 64).mean(axis=(1, 3)), rtol=1e-5)


def test_picked_pyramid_levels_hold_their_own_rows_not_the_bands_above(tmp_path, monkeypatch):
    """Labels and instances: a level's rows waiting for its band were views of the finer level's bands (every other
    row and column), which kept those bands whole in memory: level 1 held two bands of level 0 where it needs a
    quarter of each. The writer holds about as little as for a float result (the means are copies)."""
    pytest.importorskip("zarr")
    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 16)
    shape, band = (1024, 256), 32
    image = np.random.default_rng(9).integers(0, 2**31, shape).astype(np.uint32)
    writer = sinks.StreamingZarrWriter(tmp_path / "o.ome.zarr", shape, np.uint32, chunk=band)
    held = []
    for y in range(0, shape[0], band):
        writer.write(0, y, 0, image[y:y + band])
        held.append(_held_bytes(writer))
    assert max(held) < band * shape[1] * 4        # a band of level 0: its half and quarter bands, and so on
    levels = __import__("zarr").open_group(str(writer.close()), mode="r")
    np.testing.assert_array_equal(levels["3"][...], image[::8, ::8])


def _finish_unfinished(writer, finish: str) -> None:
    """End a writer that has not had every pixel: abort it, or close it (which refuses, naming why)."""
    if finish == "abort":
        writer.abort()
    else:
        with pytest.raises(RuntimeError, match="before every pixel"):
            writer.close()


@pytest.mark.parametrize("finish", ["abort", "close"])
def test_an_unfinished_ome_zarr_pyramid_leaves_nothing(tmp_path, monkeypatch, finish):
    pytest.importorskip("zarr")
    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 8)
    writer = sinks.StreamingZarrWriter(tmp_path / "o.ome.zarr", (2, 40, 30), np.uint16, chunk=4)
    writer.write(0, 0, 0, np.ones((40, 30), np.uint16))              # plane 0 and its levels written
    writer.write(1, 0, 0, np.ones((12, 30), np.uint16))
    assert (writer.temporary / "2" / "0" / "0" / "0").is_file()
    _finish_unfinished(writer, finish)
    assert os.listdir(tmp_path) == []


def test_readers_take_level_0_of_a_pyramid_ours_or_another_writers(tmp_path, monkeypatch):
    """image_io, the pixel size and the napari reader's grid come from the first dataset, the full resolution:
    of our outputs, and of a pyramid as ome-zarr-py 0.18 writes it (datasets s0, s1 with centred translations)."""
    zarr = pytest.importorskip("zarr")
    from unet_fast import image_io
    from unet_fast.pixel_size import PixelSize, read_pixel_size

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 16)
    image = np.random.default_rng(9).random((2, 40, 30), dtype=np.float32)
    size = PixelSize(0.5, 0.25, "micrometer", translation=(0.0, 3.0, 7.5))
    ours = _write_in_tiles(sinks.StreamingZarrWriter(tmp_path / "ours.ome.zarr", image.shape, np.float32,
                                                     channels=True, pixel_size=size), image, image.shape, True)
    group = zarr.open_group(str(tmp_path / "theirs.ome.zarr"), mode="w", zarr_format=2)
    group.create_array("s0", shape=image.shape, dtype=np.float32)[...] = image
    group.create_array("s1", shape=(2, 20, 15), dtype=np.float32)[...] = image[:, ::2, ::2]
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "name": "image", "datasets": [
        {"path": f"s{k}", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.5 * 2 ** k, 0.25 * 2 ** k]},
            {"type": "translation", "translation": [0.0, 3.0 + 0.25 * k, 7.5 + 0.125 * k]}]} for k in (0, 1)]}]
    for path in (ours, tmp_path / "theirs.ome.zarr"):
        assert len(zarr.open_group(str(path), mode="r").attrs["multiscales"][0]["datasets"]) >= 2
        array, info = image_io.read_image(path)
        assert info.shape == (2, 40, 30) and info.axes == "CYX"
        np.testing.assert_array_equal(np.asarray(array[...]), image)
        assert read_pixel_size(path) == size


# ---- TIFF pyramids: reduced levels as SubIFDs of each plane's page (pyramidal OME-TIFF, as Bio-Formats reads it)


@pytest.mark.parametrize("shape, channels, dtype", [
    ((37, 50), False, np.uint16),            # instances: odd height, even width
    ((2, 36, 21), False, np.uint8),          # a stack of labels
    ((3, 37, 21), True, np.float32),         # probabilities of 3 classes (samples per pixel)
    ((2, 2, 36, 22), True, np.float32),      # a stack of them
])
def test_a_large_tiff_gets_its_pyramid_as_subifds(tmp_path, monkeypatch, shape, channels, dtype):
    """Each plane's page has the levels of pyramid_sizes as SubIFDs (reduced images), made as the OME-Zarr
    writer makes them: level 0[::2**k, ::2**k] for integers, block means for floats; level 0 reads as before."""
    from unet_fast import image_io
    from unet_fast.pixel_size import PixelSize, read_pixel_size

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 8)
    rng = np.random.default_rng(3)
    image = (rng.random(shape) if np.dtype(dtype).kind == "f" else rng.integers(0, 200, shape)).astype(dtype)
    size = PixelSize(0.5, 0.25, "micrometer", translation=(0.0, 3.0, 7.5))
    path = _write_in_tiles(sinks.StreamingTiffWriter(tmp_path / "o.tif", shape, dtype, channels=channels, tile=16,
                                                     pixel_size=size, provenance={"model": "m"}),
                           image, shape, channels)
    assert sorted(os.listdir(tmp_path)) == ["o.tif"]          # the scratch folder is gone
    stack = len(shape) - channels == 3
    stored = np.moveaxis(image, -3, -1) if channels else image     # classes as samples per pixel
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.pages) == (shape[0] if stack else 1)
        levels = tif.series[0].levels
        assert len(levels) == 4 and all(len(page.subifds) == 3 for page in tif.pages)
        base_resolution = tif.pages[0].tags["XResolution"].value
        np.testing.assert_array_equal(levels[0].asarray(), stored)
        want = image
        for k in range(1, 4):
            assert levels[k].keyframe.subfiletype == 1          # FILETYPE.REDUCEDIMAGE
            level = levels[k].asarray()
            if np.dtype(dtype).kind == "f":
                want = _block_means(want).astype(dtype)
                np.testing.assert_allclose(level, np.moveaxis(want, -3, -1) if channels else want, rtol=1e-6)
            else:
                step = slice(None, None, 2 ** k)
                np.testing.assert_array_equal(level, stored[(slice(None),) * stack + (step, step)])
            resolution = levels[k].pages[0].tags["XResolution"].value
            assert resolution[0] / resolution[1] == pytest.approx(base_resolution[0] / base_resolution[1] / 2 ** k)
    array, info = image_io.read_image(path)
    np.testing.assert_array_equal(np.asarray(array[...]), image)
    np.testing.assert_array_equal(tifffile.imread(path), stored)
    assert read_pixel_size(path) == size
    assert sinks.read_provenance(path) == {"model": "m"}


def test_a_large_tiff_without_a_pixel_size_is_still_a_pyramidal_ome_tiff(tmp_path, monkeypatch):
    from unet_fast.pixel_size import read_pixel_size
    from unet_fast.segment import output_kind

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 16)
    image = np.random.default_rng(4).integers(0, 9, (40, 30)).astype(np.uint8)
    path = _write_in_tiles(sinks.StreamingTiffWriter(tmp_path / "o.tif", image.shape, np.uint8, tile=16,
                                                     provenance={"kind": "labels"}), image, image.shape, False)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.pages[0].subifds) == 2
        np.testing.assert_array_equal(tif.series[0].levels[2].asarray(), image[::4, ::4])
    assert read_pixel_size(path) is None and sinks.read_provenance(path) == {"kind": "labels"}
    assert output_kind(path) == "labels"


def test_a_small_tiff_has_no_subifds(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 40)
    image = np.random.default_rng(5).integers(0, 9, (2, 40, 30)).astype(np.uint16)
    path = _write_in_tiles(sinks.StreamingTiffWriter(tmp_path / "o.tif", image.shape, np.uint16, tile=16),
                           image, image.shape, False)
    with tifffile.TiffFile(path) as tif:
        assert all(page.subifds is None for page in tif.pages) and len(tif.series[0].levels) == 1
        assert not tif.is_ome       # no pixel size, no pyramid: a plain tiled TIFF as before
    np.testing.assert_array_equal(tifffile.imread(path), image)
    assert sorted(os.listdir(tmp_path)) == ["o.tif"]


@pytest.mark.parametrize("finish", ["abort", "close"])
def test_an_unfinished_tiff_pyramid_leaves_nothing(tmp_path, monkeypatch, finish):
    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 8)
    writer = sinks.StreamingTiffWriter(tmp_path / "o.tif", (2, 40, 30), np.uint16, tile=16)
    writer.write(0, 0, 0, np.ones((40, 30), np.uint16))              # plane 0 and its levels built
    writer.write(1, 0, 0, np.ones((12, 30), np.uint16))
    assert writer.scratch.is_dir() and writer.scratch.parent == tmp_path and writer.scratch.name.startswith(".")
    assert writer._levels[2][0].max() == 1                            # plane 0's smallest level is in the scratch
    _finish_unfinished(writer, finish)
    assert os.listdir(tmp_path) == []


# ---- NGFF label images, and how --continue tells the kinds of OME-Zarr outputs apart


@pytest.mark.parametrize("shape, dtype, channels, label_image", [
    ((40, 30), np.uint8, False, True),          # class labels
    ((2, 40, 30), np.int32, False, True),       # class labels of more than 256 classes, a stack
    ((40, 30), np.uint16, False, True),         # instances
    ((3, 40, 30), np.float32, True, False),     # probabilities
    ((3, 40, 30), np.uint8, True, False),       # integers with a class axis: no label image
])
def test_integer_results_without_a_class_axis_are_ngff_label_images(tmp_path, shape, dtype, channels, label_image):
    """Class labels are a label image in NGFF's sense as much as instances ("integer values corresponding to certain
    labels with custom meanings"): the writer marks both with "image-label"; only instances were marked."""
    zarr = pytest.importorskip("zarr")
    image = np.random.default_rng(2).integers(0, 9, shape).astype(dtype)
    path = _write_in_tiles(sinks.StreamingZarrWriter(tmp_path / "o.ome.zarr", shape, dtype, channels=channels,
                                                     provenance={"output": "x"}), image, shape, channels)
    attrs = zarr.open_group(str(path), mode="r").attrs
    assert ("image-label" in attrs) == label_image
    if label_image:
        assert attrs["image-label"] == {"version": "0.4"}          # the version of the multiscales beside it
        assert attrs["multiscales"][0]["version"] == "0.4"
    assert attrs[sinks.PROVENANCE_ATTRIBUTE] == {"output": "x"}


def _output(path, dtype, *, provenance, label_image, classes=None, zarr_format="zarr"):
    """An output file as a writer of this or an earlier version left it: ``provenance`` (None: none recorded),
    NGFF "image-label" or not (an OME-Zarr), a class axis of ``classes``."""
    shape = (classes, 20, 30) if classes else (20, 30)
    image = np.ones(shape, dtype)
    if zarr_format == "tif":
        return _write_in_tiles(sinks.StreamingTiffWriter(path.with_suffix(".tif"), shape, dtype,
                                                         channels=bool(classes), provenance=provenance),
                               image, shape, bool(classes))
    zarr = pytest.importorskip("zarr")
    path = _write_in_tiles(sinks.StreamingZarrWriter(path, shape, dtype, channels=bool(classes), provenance=provenance),
                           image, shape, bool(classes))
    group = zarr.open_group(str(path), mode="r+")
    if label_image:
        group.attrs["image-label"] = {"version": "0.4"}
    else:
        group.attrs.pop("image-label", None)
    return path


@pytest.mark.parametrize("recorded, dtype, label_image, classes, kind", [
    ("labels", np.uint8, True, None, "labels"),            # class labels as written now: told by their provenance
    ("labels", np.int32, True, None, "labels"),
    ("labels", np.uint8, False, None, "labels"),           # as written before they were label images
    ("instances", np.uint16, True, None, "instances"),     # instances as written now and before
    ("instances", np.uint32, True, None, "instances"),
    ("probabilities", np.float32, False, 3, "probabilities"),
    ("logits", np.float32, False, 3, "logits"),            # predict_tiled's other kind: never taken for probabilities
    (None, np.uint16, True, None, "instances"),            # no provenance (older outputs): by the data type
    (None, np.uint8, False, None, "labels"),
    (None, np.uint8, True, None, "labels"),                # "image-label" no longer tells instances
    (None, np.float32, False, 3, "probabilities"),
    ("labels", np.float32, False, 3, None),                # a recorded kind its data do not hold: cannot be told
    ("probabilities", np.uint8, True, None, None),
    ("instances", np.float32, False, 3, None),
    ("cells", np.uint8, True, None, None),                 # a kind no version wrote
    (5, np.uint8, True, None, None),
    (["labels"], np.uint8, True, None, None),
])
def test_output_kind_is_the_recorded_kind_where_the_data_hold_it(tmp_path, recorded, dtype, label_image, classes,
                                                                 kind):
    from unet_fast.segment import output_kind

    provenance = None if recorded is None else {"output": recorded, "weights_sha256": "0"}
    path = _output(tmp_path / "o.ome.zarr", dtype, provenance=provenance, label_image=label_image, classes=classes)
    assert output_kind(path) == kind


@pytest.mark.parametrize("recorded, dtype, classes, kind", [
    ("labels", np.uint8, None, "labels"), ("instances", np.uint16, None, "instances"), ("logits", np.float32, 2,
    "logits"), ("probabilities", np.uint8, None, None), (None, np.uint16, None, "instances")])
def test_output_kind_of_a_tiff_is_its_recorded_kind_too(tmp_path, recorded, dtype, classes, kind):
    from unet_fast.segment import output_kind

    provenance = None if recorded is None else {"output": recorded}
    path = _output(tmp_path / "o.ome.zarr", dtype, provenance=provenance, label_image=False, classes=classes,
                   zarr_format="tif")
    assert output_kind(path) == kind


def test_continue_tells_ome_zarr_class_labels_from_instances(tmp_path, capsys):
    """Both kinds are NGFF label images now; --continue tells them apart by the kind their provenance records: class
    labels kept for --output labels and refused for instances, instances the other way round."""
    zarr = pytest.importorskip("zarr")
    import torch

    import unet_fast
    from unet_fast import cli, image_io
    from unet_fast.segment import output_kind

    torch.manual_seed(0)
    model = unet_fast.save_model(unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2),
                                 tmp_path / "model.safetensors", normalization=unet_fast.Normalization(mode="dtype"))
    (tmp_path / "in").mkdir()
    for i in range(2):
        image_io.write_image(tmp_path / "in" / f"img{i}.tif",
                             np.random.default_rng(i).integers(0, 255, (30, 41)).astype(np.uint8))
    out = tmp_path / "out"

    def segment(kind, *more):
        status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model), "--no-progress",
                           "--format", "ome.zarr", "--output", kind, *more])
        return status, capsys.readouterr()

    classes = [{"label-value": 0, "class": "class0"}, {"label-value": 1, "class": "class1"}]   # the default names
    for kind, other in (("labels", "instances"), ("instances", "labels")):
        assert segment(kind)[0] == 0
        group = zarr.open_group(str(out / "img0.ome.zarr"), mode="r")
        label = {"version": "0.4", **({"properties": classes} if kind == "labels" else {})}  # class labels name them
        assert group.attrs["image-label"] == label and group.attrs["unet_fast"]["output"] == kind
        assert output_kind(out / "img0.ome.zarr") == kind
        status, captured = segment(kind, "--continue")
        assert status == 0 and "0 segmented, 2 skipped" in captured.out
        status, captured = segment(other, "--continue")
        assert status == 2 and f"holds {kind}, not {other}" in captured.err, captured.err


# ---- class names of class labels: NGFF "image-label" "properties"

NAMED = [{"label-value": 0, "class": "background"}, {"label-value": 1, "class": "nucleus"},
         {"label-value": 2, "class": "border"}]


@pytest.mark.parametrize("shape, dtype", [((40, 30), np.uint8), ((2, 40, 30), np.int32)])
def test_class_labels_name_their_classes_in_ngff_label_properties(tmp_path, shape, dtype):
    """NGFF 0.4 "image-label" "properties": a list of objects, each with the integer pixel value it describes
    ("label-value", unique) and any keys beside it; the name of each class, background (0) included, goes there as
    "class", the key of NGFF's own example. ome_zarr.label_classes reads them back."""
    zarr = pytest.importorskip("zarr")
    from unet_fast.ome_zarr import label_classes

    image = np.random.default_rng(3).integers(0, 3, shape).astype(dtype)
    path = _write_in_tiles(sinks.open_streaming_writer(tmp_path / "o.ome.zarr", shape, dtype,
                                                       class_names=["background", "nucleus", "border"]),
                           image, shape, False)
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["image-label"] == {"version": "0.4", "properties": NAMED}
    np.testing.assert_array_equal(group["0"][...], image)
    assert label_classes(path) == {0: "background", 1: "nucleus", 2: "border"}


@pytest.mark.parametrize("shape, dtype, channels, class_names, message", [
    ((3, 40, 30), np.float32, True, ["a", "b"], "2 classes, but the result has 3 along its class axis"),
    ((2, 3, 40, 30), np.float32, True, ["a", "b", "c", "d"], "4 classes, but the result has 3 along its class axis"),
    ((40, 30), np.float32, False, ["a", "b"], "name the values of class labels .* float32: leave class_names out"),
    ((40, 30), np.uint8, False, "nucleus", "must be a non-empty list of the classes' names"),
    ((40, 30), np.uint8, False, [], "must be a non-empty list"),
    ((40, 30), np.uint8, False, ["background", 1], "must be a non-empty list"),
    ((40, 30), np.uint8, False, [f"c{i}" for i in range(257)], "257 classes, but uint8 holds values up to 255: "
                                                                "write the labels as a wider integer type"),
])
def test_class_names_that_cannot_name_the_labels_are_refused_before_anything_is_written(
        tmp_path, shape, dtype, channels, class_names, message):
    pytest.importorskip("zarr")
    from unet_fast.checks import BadArgument

    with pytest.raises(BadArgument, match=message) as raised:
        sinks.StreamingZarrWriter(tmp_path / "o.ome.zarr", shape, dtype, channels=channels, class_names=class_names)
    assert raised.value.argument == "class_names" and str(raised.value).startswith("class_names")
    assert os.listdir(tmp_path) == []


def test_segment_names_the_models_classes_in_ome_zarr_class_labels_only(tmp_path, capsys):
    """unet-fast segment --format ome.zarr: class labels name the model file's classes (NGFF "image-label"
    "properties"), whichever way a file is segmented (small files of one shape together, another alone, resampled);
    the provenance records them (a TIFF's too); probabilities are no label image: their class axis' channels are
    named ("omero" labels), and the reader names a class's layer by it (instances, objects not classes, get none:
    test_continue_tells_ome_zarr_class_labels_from_instances). unet_fast's napari reader gives class labels' names
    to the Labels layer as its features."""
    zarr = pytest.importorskip("zarr")
    import torch

    import unet_fast
    from unet_fast import cli, image_io
    from unet_fast.napari.reader import read_ome_zarr

    torch.manual_seed(0)
    model = unet_fast.save_model(unet_fast.UNet(in_channels=1, num_classes=3, depth=2, base_channels=2),
                                 tmp_path / "model.safetensors", normalization=unet_fast.Normalization(mode="dtype"),
                                 class_names=["background", "nucleus", "border"])
    (tmp_path / "in").mkdir()
    for i, shape in enumerate([(30, 41), (30, 41), (33, 45)]):    # two segmented together, the third alone
        image_io.write_image(tmp_path / "in" / f"img{i}.tif",
                             np.random.default_rng(i).integers(0, 255, shape).astype(np.uint8))

    def segment(out, *more):
        status = cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / out), "-m", str(model),
                           "--no-progress", *more])
        assert status == 0, capsys.readouterr()
        return tmp_path / out

    for out in (segment("labels", "--format", "ome.zarr"), segment("scaled", "--format", "ome.zarr", "--scale", "1.5")):
        for i in range(3):
            path = out / f"img{i}.ome.zarr"
            assert zarr.open_group(str(path), mode="r").attrs["image-label"] == {"version": "0.4", "properties": NAMED}
            assert sinks.read_provenance(path)["class_names"] == ["background", "nucleus", "border"]
        [(_, layer, kind)] = read_ome_zarr(out / "img2.ome.zarr")
        assert kind == "labels" and layer["features"] == {"index": [0, 1, 2], "class": ["background", "nucleus",
                                                                                          "border"]}
    assert sinks.read_provenance(segment("tif") / "img0.tif")["class_names"] == ["background", "nucleus", "border"]
    probabilities = segment("probabilities", "--format", "ome.zarr", "--output", "probabilities") / "img0.ome.zarr"
    attributes = zarr.open_group(str(probabilities), mode="r").attrs
    assert "image-label" not in attributes      # no label image: its class axis' channels are named instead
    assert [channel["label"] for channel in attributes["omero"]["channels"]] == ["background", "nucleus", "border"]
    assert sinks.read_provenance(probabilities)["class_names"] == ["background", "nucleus", "border"]
    [(_, layer, kind)] = read_ome_zarr(probabilities)
    assert kind == "image" and layer["name"] == ["img0 background", "img0 nucleus", "img0 border"]


def test_predict_tiled_names_the_classes_of_an_ome_zarr_of_class_labels(tmp_path):
    """From Python too, not only through segment's provenance: predict_tiled(out=...ome.zarr) names the model's
    classes (``model.class_names``, as load_model gives them; else class0, class1, ...) in "image-label"
    "properties"; logits get none."""
    zarr = pytest.importorskip("zarr")
    import torch

    import unet_fast
    from unet_fast.inference import predict_tiled

    torch.manual_seed(0)
    model = unet_fast.UNet(in_channels=1, num_classes=3, depth=2, base_channels=2)
    image = np.random.default_rng(0).random((2, 37, 29), dtype=np.float32)    # a stack, odd sizes
    predict_tiled(model, image, out=tmp_path / "default.ome.zarr", progress=False)
    model.class_names = ["background", "nucleus", "border"]
    predict_tiled(model, image[:, ::-1], out=tmp_path / "named.ome.zarr", progress=False)
    predict_tiled(model, image, out=tmp_path / "logits.ome.zarr", output="logits", progress=False)
    read = lambda name: zarr.open_group(str(tmp_path / name), mode="r").attrs
    assert read("default.ome.zarr")["image-label"]["properties"] == [
        {"label-value": v, "class": f"class{v}"} for v in range(3)]
    assert read("named.ome.zarr")["image-label"]["properties"] == NAMED
    assert "image-label" not in read("logits.ome.zarr")


def test_tiff_writers_open_at_once_keep_their_pyramids_however_late_they_are_closed(tmp_path, monkeypatch):
    """Several TIFF writers open at once, their blocks interleaved, each closed only after its level 0 was written
    (as another writer's last bands or close, or a slow progress callable, delay it): each keeps every level of its
    pyramid. The writer thread read whether to write the levels as soon as tifffile had taken level 0's last tile,
    which was before close() said so: the SubIFDs were left at offset 0 (tifffile: "OME series level 1 is empty")."""
    import threading

    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 8)
    level0_written: dict[str, threading.Event] = {}
    write = tifffile.TiffWriter.write

    def spied(self, data, *args, **kwargs):
        result = write(self, data, *args, **kwargs)
        if kwargs.get("subifds"):                      # level 0 (its pages given room for the SubIFDs)
            level0_written.setdefault(self.filehandle.name, threading.Event()).set()
        return result

    monkeypatch.setattr(tifffile.TiffWriter, "write", spied)
    rng = np.random.default_rng(6)
    cases = [((37, 50), False, np.uint16),          # instances: odd height
             ((2, 36, 21), False, np.uint8),        # a stack of class labels: odd width
             ((3, 37, 21), True, np.float32)]       # probabilities of 3 classes (samples per pixel)
    images = [(rng.random(shape) if np.dtype(dtype).kind == "f" else rng.integers(1, 250, shape)).astype(dtype)
              for shape, _, dtype in cases]
    writers = [sinks.StreamingTiffWriter(tmp_path / f"{n}.tif", shape, dtype, channels=channels, tile=16)
               for n, (shape, channels, dtype) in enumerate(cases)]
    queues = []                                      # each writer's blocks: every plane in bands of 9 rows
    for (shape, channels, _), image in zip(cases, images):
        stack = len(shape) - channels == 3
        queues.append([(p, y, (image[p] if stack else image)[..., y:y + 9, :])
                       for p in range(shape[0] if stack else 1) for y in range(0, shape[-2], 9)])
    while any(queues):                               # round robin: the writers' blocks interleave
        for writer, queue in zip(writers, queues):
            if queue:
                plane, y, block = queue.pop(0)
                writer.write(plane, y, 0, block)
    for writer in writers:
        event = level0_written.setdefault(writer.temporary.name, threading.Event())
        assert event.wait(10), f"{writer.path}: level 0 was not written"
    paths = [writer.close() for writer in reversed(writers)][::-1]
    assert sorted(os.listdir(tmp_path)) == ["0.tif", "1.tif", "2.tif"]     # no scratch folder left
    for (shape, channels, dtype), image, path in zip(cases, images, paths):
        stack = len(shape) - channels == 3
        stored = np.moveaxis(image, -3, -1) if channels else image
        with tifffile.TiffFile(path) as tif:
            assert all(offset > 0 for page in tif.pages for offset in page.tags["SubIFDs"].value), path
            levels = tif.series[0].levels
            assert len(levels) == len(sinks.pyramid_sizes(*shape[-2:])) == 4, path
            np.testing.assert_array_equal(levels[0].asarray(), stored)
            want = image
            for k in range(1, len(levels)):
                level = levels[k].asarray()
                if np.dtype(dtype).kind == "f":
                    want = _block_means(want).astype(dtype)
                    np.testing.assert_allclose(level, np.moveaxis(want, -3, -1), rtol=1e-6, err_msg=str(path))
                else:
                    step = slice(None, None, 2 ** k)
                    np.testing.assert_array_equal(level, stored[(slice(None),) * stack + (step, step)], str(path))


def _tiff_segments(path) -> list[bytes]:
    """The stored (compressed) tiles of every page of a TIFF, its SubIFDs' too, as bytes."""
    with tifffile.TiffFile(path) as tif:
        segments = []
        for level in tif.series[0].levels:
            for page in level.pages:
                for offset, count in zip(page.dataoffsets, page.databytecounts):
                    tif.filehandle.seek(offset)
                    segments.append(tif.filehandle.read(count))
        return segments


@pytest.mark.parametrize("shape, channels, dtype, across", [
    ((700, 650), False, np.uint16, [6, 3, 2]),                # instances: 6, then 3 and 2 tiles a band a level
    ((2, 3, 300, 650), True, np.float32, [6, 3, 2]),          # a stack of 3 classes' probabilities (samples)
])
def test_compression_threads_take_a_band_of_tiles_at_a_time(tmp_path, monkeypatch, shape, channels, dtype, across):
    """With several compression threads (TIFF.MAXWORKERS > 1: 4 CPU cores or more) tifffile draws ``buffersize``
    bytes of tiles (512 MiB unless told) from the stream before it writes any: a 16384^2 uint32 image drew
    2048 tiles, half of it. The writer asks for a band's worth, level by level, so no more than a band of tiles
    is drawn ahead of the file (each tile drawn is seen against the file's length: all drawn at one length were
    drawn before any of them was written); the file is as one thread writes it, byte for byte."""
    monkeypatch.setattr(sinks, "PYRAMID_MAX_SIDE", 300)        # two reduced levels, as SubIFDs
    tile = 128                                                 # 32 KiB of uint16: tifffile's least for threads
    tile_bytes = tile * tile * (shape[-3] if channels else 1) * np.dtype(dtype).itemsize
    rng = np.random.default_rng(6)
    image = (rng.random(shape) if np.dtype(dtype).kind == "f" else rng.integers(0, 5000, shape)).astype(dtype)
    original = tifffile.TiffWriter.write
    writes = []

    def spy(self, data, *args, **kwargs):
        drawn_at = []                                          # the file's length as each tile was drawn

        def drawn():
            for item in data:
                drawn_at.append(self._fh.tell())
                yield item
        writes.append((kwargs.get("buffersize"), drawn_at))
        return original(self, drawn(), *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", spy)
    paths = {}
    for threads in (1, 2):
        monkeypatch.setattr(tifffile.TIFF, "MAXWORKERS", threads)
        writes.clear()
        paths[threads] = _write_in_tiles(sinks.StreamingTiffWriter(tmp_path / f"{threads}.tif", shape, dtype,
                                                                   channels=channels, tile=tile),
                                         image, shape, channels, tile=(100, 90))
    planes = shape[0] if len(shape) - channels == 3 else 1
    assert [buffersize for buffersize, _ in writes] == [n * tile_bytes for n in across]
    for (_, drawn_at), n, (height, width) in zip(writes, across, sinks.pyramid_sizes(*shape[-2:])):
        assert len(drawn_at) == planes * -(-height // tile) * n
        ahead = max(len(list(run)) for _, run in itertools.groupby(drawn_at))
        assert 1 < ahead <= n, (n, ahead)         # threads at work, never on more than a band of tiles
    assert _tiff_segments(paths[2]) == _tiff_segments(paths[1])
    stored = np.moveaxis(image, -3, -1) if channels else image
    np.testing.assert_array_equal(tifffile.imread(paths[2]), stored)
