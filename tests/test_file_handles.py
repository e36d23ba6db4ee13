"""Files read lazily are closed when their reader is done, not when the garbage collector runs: a run over
thousands of TIFFs held as many handles, and closed them with a ResourceWarning each (`python -W error`)."""
import contextlib
import gc
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import unet_fast
from optional_deps import needs_zarr
from unet_fast import image_io, measure, segment

pytestmark = [needs_zarr, pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files by /proc")]


def open_files(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open, once per handle."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):          # the listing's own handle, gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder) + os.sep):
                held.append(os.path.relpath(target, folder))
    return sorted(held)


@contextlib.contextmanager
def collector_off_and_warnings_kept(folder: Path):
    """The collector off (what it would close is seen held open), then run: the ResourceWarnings of files under
    ``folder`` it raised, or that anything else did meanwhile, are in the list yielded, when the block ends."""
    gc.collect()                                    # earlier tests' garbage: not ours to judge
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", ResourceWarning)
        gc.disable()
        try:
            yield caught
        finally:
            gc.enable()
            gc.collect()
    caught += [str(r.message) for r in records if issubclass(r.category, ResourceWarning) and str(folder) in
               str(r.message)]


def write_tiles(path: Path, image: np.ndarray, photometric: str = "minisblack") -> np.ndarray:
    tifffile.imwrite(path, image, tile=(16, 16), compression="zlib", photometric=photometric)
    return image


def test_read_image_closes_a_lazy_tiff_when_dropped_closed_or_left_with(tmp_path):
    rng = np.random.default_rng(0)
    plane = write_tiles(tmp_path / "plane.tif", rng.integers(0, 9, (37, 53)).astype(np.uint16))
    rgb = write_tiles(tmp_path / "rgb.tif", rng.integers(0, 255, (21, 35, 3)).astype(np.uint8),
                      photometric="rgb")                              # read through a lazy view (_MovedAxes)
    with collector_off_and_warnings_kept(tmp_path) as caught:
        array, _ = image_io.read_image(tmp_path / "plane.tif")
        np.testing.assert_array_equal(array[3:30, 5:50], plane[3:30, 5:50])
        assert open_files(tmp_path) == ["plane.tif"]
        del array                                                  # dropped: closed at once
        assert open_files(tmp_path) == []

        view, info = image_io.read_image(tmp_path / "rgb.tif")
        assert info.axes == "CYX"
        np.testing.assert_array_equal(view[1, :7], rgb[:7, :, 1])
        image_io.close_image(view)                                 # closed while still held
        assert open_files(tmp_path) == []
        np.testing.assert_array_equal(view[2, 20:], rgb[20:, :, 2])   # read again: opened again, same pixels
        image_io.close_image(view)
        assert open_files(tmp_path) == []

        with image_io.opened_image(tmp_path / "plane.tif") as (array, _):
            np.testing.assert_array_equal(array[...], plane)
            assert open_files(tmp_path) == ["plane.tif"]
        assert open_files(tmp_path) == []
        image_io.close_image(np.zeros(3))                         # other arrays: nothing to close
    assert caught == []


def test_measure_leaves_no_file_open(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    for name, shape in [("a", (45, 61)), ("b", (2, 33, 40))]:      # a plane, and a stack of two
        labels = np.zeros(shape, np.uint16)
        labels[..., 5:20, 7:19], labels[..., 25:31, 22:39] = 1, 2
        write_tiles(tmp_path / "labels" / f"{name}.tif", labels)
        write_tiles(tmp_path / "images" / f"{name}.tif", rng.integers(0, 4000, shape).astype(np.uint16))
    negative = np.zeros((40, 30), np.int16)
    negative[33, 20] = -3                                          # found while read: FAILED, after both opened
    write_tiles(tmp_path / "labels" / "c.tif", negative)
    write_tiles(tmp_path / "images" / "c.tif", np.ones((40, 30), np.uint8))
    with collector_off_and_warnings_kept(tmp_path) as caught:
        table = measure.measure_objects(tmp_path / "labels" / "a.tif", tmp_path / "images" / "a.tif")
        assert list(table["area_px"]) == [15 * 12, 6 * 17]
        assert open_files(tmp_path) == []
        with pytest.raises(ValueError, match="negative") as raised:
            measure.measure_objects(tmp_path / "labels" / "c.tif", tmp_path / "images" / "c.tif")
        assert open_files(tmp_path) == []          # though the error's traceback still holds the arrays read
        del raised
        result = measure.run([tmp_path / "labels"], tmp_path / "tables", images=[tmp_path / "images"],
                             log=lambda *args, **kwargs: None)
        assert [Path(name).name for name in result.measured] == ["a.tif", "b.tif"] and result.objects == 2 + 4
        assert [Path(name).name for name, _ in result.failed] == ["c.tif"]
        assert open_files(tmp_path) == []
    assert caught == []


@pytest.mark.parametrize("small_files", [0, segment.SMALL_FILE_PIXELS], ids=["alone", "together"])
def test_segment_leaves_no_input_or_output_open(tmp_path, monkeypatch, small_files):
    """Inputs read lazily, outputs read back for their overlays, and with --continue outputs read for their kind
    and inputs for a missing overlay: all closed by the time segment returns."""
    monkeypatch.setattr(segment, "SMALL_FILE_PIXELS", small_files)
    torch.manual_seed(0)
    model = unet_fast.save_model(unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2),
                                 tmp_path / "model.safetensors", normalization=unet_fast.Normalization(mode="dtype"))
    rng = np.random.default_rng(2)
    (tmp_path / "in").mkdir()
    for name, shape in [("a", (70, 45)), ("b", (2, 33, 50)), ("c", (70, 45))]:
        write_tiles(tmp_path / "in" / f"{name}.tif", rng.integers(0, 255, shape).astype(np.uint8))
    with collector_off_and_warnings_kept(tmp_path) as caught:
        first = segment.run([tmp_path / "in"], tmp_path / "out", model, overlay=True, output="instances")
        assert first.exit_status == 0 and first.segmented == 3
        assert open_files(tmp_path) == []
        (tmp_path / "out" / "overlays" / "b.png").unlink()
        again = segment.run([tmp_path / "in"], tmp_path / "out", model, overlay=True, output="instances",
                            resume=True)
        assert again.exit_status == 0 and again.skipped == 3 and (tmp_path / "out" / "overlays" / "b.png").exists()
        assert open_files(tmp_path) == []
    assert caught == []
