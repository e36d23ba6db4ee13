"""unet_fast.measure and `unet-fast measure`: every table checked against a per-object oracle (a loop over the
ids with boolean masks), or against numbers worked out by hand."""
from pathlib import Path
import csv
import warnings

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from unet_fast import cli, measure
from unet_fast.pixel_size import PixelSize, tiff_options
from unet_fast.sinks import StreamingTiffWriter
from optional_deps import needs_zarr


def oracle(labels, image=None, pixel_size=None):
    """The columns of ``measure_objects``, object by object: np.unique and a boolean mask per id."""
    labels = np.asarray(labels)
    stacked = labels.ndim == 3
    planes = labels if stacked else labels[None]
    images = None
    if image is not None:
        image = np.asarray(image)
        images = image if stacked else image[None]
        if images.ndim == 3:                       # no channel axis
            images = images[:, None]
    rows = []
    for z, plane in enumerate(planes):
        for value in np.unique(plane):
            if value == 0:
                continue
            mask = plane == value
            ys, xs = np.nonzero(mask)
            row = {"plane": z, "label": int(value), "area_px": int(mask.sum()), "centroid_y_px": ys.mean(),
                   "centroid_x_px": xs.mean(), "bbox_min_row": ys.min(), "bbox_min_col": xs.min(),
                   "bbox_max_row": ys.max(), "bbox_max_col": xs.max()}
            if images is not None:
                for c, channel in enumerate(images[z]):
                    pixels = channel[mask]
                    row[f"c{c}"] = (pixels.astype(np.float64).mean(), pixels.min(), pixels.max(),
                                    pixels.astype(np.float64).sum())
            rows.append(row)
    columns = {}
    if stacked:
        columns["plane"] = [r["plane"] for r in rows]
    columns["label"] = [r["label"] for r in rows]
    columns["area_px"] = [r["area_px"] for r in rows]
    unit = None
    if pixel_size is not None:
        unit = measure.unit_symbol(pixel_size.unit)
        columns[f"area_{unit}2"] = [r["area_px"] * pixel_size.y * pixel_size.x for r in rows]
    columns["centroid_y_px"] = [r["centroid_y_px"] for r in rows]
    columns["centroid_x_px"] = [r["centroid_x_px"] for r in rows]
    if pixel_size is not None:
        _, ty, tx = pixel_size.translation or (0, 0, 0)
        columns[f"centroid_y_{unit}"] = [r["centroid_y_px"] * pixel_size.y + ty for r in rows]
        columns[f"centroid_x_{unit}"] = [r["centroid_x_px"] * pixel_size.x + tx for r in rows]
    for name in ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"):
        columns[name] = [r[name] for r in rows]
    if images is not None:
        channels = images.shape[1]
        for c in range(channels):
            suffix = f"_c{c}" if channels > 1 else ""
            for k, statistic in enumerate(("mean", "min", "max", "sum")):
                columns[f"intensity_{statistic}{suffix}"] = [r[f"c{c}"][k] for r in rows]
    return columns


def assert_same_table(got, expected):
    assert list(got) == list(expected)
    for name, values in expected.items():
        assert got[name].shape == (len(values),), name
        if name in ("plane", "label", "area_px") or name.startswith("bbox"):
            assert got[name].dtype.kind in "iu", name
            assert [int(v) for v in got[name].tolist()] == [int(v) for v in values], name     # exact, up to 2**64
        else:
            np.testing.assert_allclose(got[name].astype(np.float64), np.asarray(values, np.float64), rtol=1e-12,
                                       atol=1e-9, err_msg=name)


def blobs(shape, count, seed, dtype=np.uint16):
    """Instance labels: discs of random size and place (later ones over earlier ones), numbered 1..count."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for k in range(1, count + 1):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(1, max(2, min(shape) / 3))
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    return labels


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of 3 rows of a 23-column image and merges of the running table every few rows, so that small
    images cross many band boundaries and merges."""
    monkeypatch.setattr(measure, "BAND_PIXELS", 3 * 23)
    monkeypatch.setattr(measure, "MERGE_ROWS", 4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int16, np.int32, np.int64])
def test_every_label_type_matches_the_oracle_across_bands(dtype, small_bands):
    labels = blobs((37, 23), 12, seed=1, dtype=dtype)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 60000, (2, 37, 23)).astype(np.uint16)
    got = measure.measure_objects(labels, image)
    assert_same_table(got, oracle(labels, image))
    assert got["intensity_min_c0"].dtype == np.uint16 and got["intensity_sum_c1"].dtype == np.int64
    assert len(got["label"]) == len(np.unique(labels)) - 1 > 5


@pytest.mark.parametrize("rows", [1, 2, 5, 64])
def test_objects_crossing_band_boundaries_in_any_band_height(rows, monkeypatch):
    """A U that enters bands twice, a spiral-like snake over every row, a one-pixel object, objects touching
    the image's edges: the same table whatever the band height."""
    monkeypatch.setattr(measure, "BAND_PIXELS", rows * 19)
    monkeypatch.setattr(measure, "MERGE_ROWS", 3)
    labels = np.zeros((29, 19), np.uint32)
    labels[2:20, 1] = labels[2:20, 5] = labels[19, 1:6] = 7           # a U: two arms joined at the bottom
    for y in range(0, 29, 2):                                        # a snake: every other row, joined at the ends
        labels[y, 8:18] = 9
        labels[y:y + 2, 8 if y % 4 else 17] = 9
    labels[28, 0] = 3                                                 # one pixel in a corner
    labels[0, 18] = 4
    labels[23:25, :] = 5                      # the full width: its runs end a row and start the next, unjoined
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape) / 7
    assert_same_table(measure.measure_objects(labels, image), oracle(labels, image))


def test_the_running_table_stays_as_long_as_the_objects(monkeypatch):
    """Memory holds a row per object (and the bands' rows waiting to be merged), not a row per band an object
    crossed: 200 bands of the same 3 objects keep a table of a few rows."""
    monkeypatch.setattr(measure, "MERGE_ROWS", 8)
    ops = measure._Ops(0)
    objects = measure._Objects(ops)
    held = []
    for band in range(200):
        labels = np.array([[1, 1, 2, 0, 3]], np.uint32)
        objects.add(measure._band_table(labels, band, None, ops, "labels"))
        held.append(sum(ids.size for ids, _ in objects.parts))
    assert max(held) <= 9
    ids, table = objects.result(np.uint32)
    assert ids.tolist() == [1, 2, 3] and dict(zip(ops.names, table))["area"].tolist() == [400, 200, 200]
    assert dict(zip(ops.names, table))["max_row"].tolist() == [199] * 3


def test_by_hand():
    """Numbers worked out on paper: a 2 x 3 rectangle and an L of 3 pixels, physical in nanometers with a
    translation."""
    labels = np.zeros((5, 6), np.uint8)
    labels[1:3, 2:5] = 4
    labels[3, 0] = labels[4, 0] = labels[4, 1] = 2
    image = np.zeros((5, 6), np.uint16)
    image[1, 2:5] = [1, 2, 3]
    image[2, 2:5] = [4, 5, 6]
    image[3, 0], image[4, 0], image[4, 1] = 10, 20, 30
    size = PixelSize(2.0, 0.5, "nanometer", translation=(0.0, 100.0, -1.0))
    got = measure.measure_objects(labels, image, pixel_size=size)
    assert list(got["label"]) == [2, 4] and list(got["area_px"]) == [3, 6]
    assert list(got["area_nm2"]) == [3.0, 6.0]
    assert list(got["centroid_y_px"]) == [11 / 3, 1.5] and list(got["centroid_x_px"]) == [1 / 3, 3.0]
    assert list(got["centroid_y_nm"]) == pytest.approx([100 + 22 / 3, 103.0])
    assert list(got["centroid_x_nm"]) == pytest.approx([-1 + 1 / 6, 0.5])
    assert [list(got[f"bbox_{n}"]) for n in ("min_row", "min_col", "max_row", "max_col")] == \
        [[3, 1], [0, 2], [4, 2], [1, 4]]
    assert list(got["intensity_sum"]) == [60, 21] and list(got["intensity_mean"]) == [20.0, 3.5]
    assert list(got["intensity_min"]) == [10, 1] and list(got["intensity_max"]) == [30, 6]


def test_sparse_huge_ids_allocate_nothing_of_their_size(small_bands):
    """Ids up to 2**64 - 1 (uint64) and 2**62 (int64), sparse: an array as long as the largest id could not be
    allocated, so the table is made without one."""
    base = blobs((31, 23), 9, seed=4, dtype=np.uint64)
    ids = np.array([0, 1, 10 ** 9, 2 ** 40, 2 ** 63 - 1, 2 ** 63, 2 ** 63 + 5, 2 ** 64 - 2, 2 ** 64 - 1, 77],
                   np.uint64)
    labels = ids[base]
    assert_same_table(measure.measure_objects(labels), oracle(labels))
    signed = (labels % np.uint64(2 ** 62)).astype(np.int64)
    assert_same_table(measure.measure_objects(signed), oracle(signed))


def test_no_objects_and_no_pixels_give_no_rows():
    for labels in (np.zeros((7, 9), np.uint16), np.zeros((0, 9), np.uint16), np.zeros((4, 0), np.int32)):
        got = measure.measure_objects(labels, np.ones(labels.shape, np.float32), pixel_size=0.5)
        assert list(got) == list(oracle(np.zeros((1, 1), np.uint8), np.ones((1, 1)), PixelSize(0.5, 0.5)))
        assert all(len(column) == 0 for column in got.values())
        assert got["intensity_min"].dtype == np.float32 and got["area_px"].dtype == np.int64
    got = measure.measure_objects(np.zeros((0, 4, 4), np.uint32), np.zeros((0, 2, 4, 4)))
    assert list(got)[:3] == ["plane", "label", "area_px"] and "intensity_sum_c1" in got
    assert all(len(column) == 0 for column in got.values())


def test_views_and_other_layouts(small_bands):
    """Non-contiguous views (steps, reversed, transposed, Fortran order), big-endian data, torch tensors."""
    labels = blobs((60, 50), 15, seed=5, dtype=np.int32)
    image = np.random.default_rng(6).normal(size=(3, 60, 50))
    cases = [(labels[::2, ::-2], image[0, ::2, ::-2]),                        # (30, 25) views with steps
             (labels.T, image.transpose(0, 2, 1)),                            # (50, 60), 3 channels
             (np.asfortranarray(labels[:23]), np.asfortranarray(image[1, :23])),
             (labels[:23].astype(">u4"), image[2, :23].astype(">f8")),
             (torch.from_numpy(labels[:23].copy()), torch.from_numpy(image[:2, :23].copy()))]
    for view, picture in cases:
        assert_same_table(measure.measure_objects(view, picture), oracle(np.asarray(view), np.asarray(picture)))


def test_stacks_are_measured_plane_by_plane(small_bands):
    """A (Z, H, W) stack (or a batch) numbered per plane, as segment numbers its planes: label 1 of each plane
    is an object of its own; the image (Z, C, H, W) or (Z, H, W)."""
    stack = np.stack([blobs((19, 23), 5, seed=s) for s in range(3)])
    assert all(1 in plane for plane in stack)
    image = np.random.default_rng(7).integers(-50, 50, (3, 2, 19, 23)).astype(np.int8)
    got = measure.measure_objects(stack, image)
    assert_same_table(got, oracle(stack, image))
    assert sorted(set(got["plane"].tolist())) == [0, 1, 2]
    assert_same_table(measure.measure_objects(stack, image[:, 1]), oracle(stack, image[:, 1]))


def test_nan_pixels_spoil_their_own_object_only():
    labels = np.array([[1, 1, 2], [0, 2, 2]], np.uint8)
    image = np.array([[1.0, np.nan, 3.0], [np.nan, 4.0, 5.0]])
    got = measure.measure_objects(labels, image)
    assert np.isnan([got[f"intensity_{s}"][0] for s in ("mean", "min", "max", "sum")]).all()
    assert [got[f"intensity_{s}"][1] for s in ("mean", "min", "max", "sum")] == [4.0, 3.0, 5.0, 12.0]


def test_a_bool_image_counts_ones():
    labels = np.array([[1, 1, 2, 2]], np.uint8)
    got = measure.measure_objects(labels, np.array([[True, False, False, False]]))
    assert list(got["intensity_sum"]) == [1, 0] and list(got["intensity_max"]) == [1, 0]


@pytest.mark.parametrize("labels, words", [
    (np.zeros((4, 4), np.float32), ["floats", "--output instances"]),
    (np.zeros((4, 4), bool), ["mask", "ndimage.label"]),
    (np.zeros((2, 2, 4, 4), np.uint16), ["(H, W) or a stack"]),
    (np.zeros((4, 4), np.complex64), ["complex64"]),
])
def test_what_is_no_instance_label_image_is_refused(labels, words):
    with pytest.raises(ValueError) as error:
        measure.measure_objects(labels)
    assert all(word in str(error.value) for word in words), error.value


def test_negative_labels_are_refused_naming_where(small_bands):
    labels = np.zeros((20, 23), np.int16)
    labels[2, 3] = 5
    labels[17, 4] = -3
    with pytest.raises(ValueError, match=r"negative values \(e.g. -3 at row 17, column 4\)"):
        measure.measure_objects(labels)


def test_an_image_of_another_size_is_refused_naming_both(tmp_path):
    tifffile.imwrite(tmp_path / "cells.tif", np.ones((8, 9), np.uint16))
    tifffile.imwrite(tmp_path / "image.tif", np.ones((8, 10), np.uint16))
    with pytest.raises(ValueError, match="cells.tif is 8 x 9 px .*image.tif is 8 x 10 px"):
        measure.measure_objects(tmp_path / "cells.tif", tmp_path / "image.tif")
    tifffile.imwrite(tmp_path / "stack.tif", np.ones((2, 8, 9), np.uint16))
    with pytest.raises(ValueError, match=r"stack.tif is 8 x 9 px in 2 planes .*cells.tif is 8 x 9 px \(one plane\)"):
        measure.measure_objects(tmp_path / "stack.tif", tmp_path / "cells.tif")
    with pytest.raises(ValueError, match=r"image must be \(H, W\) or \(C, H, W\)"):
        measure.measure_objects(np.ones((8, 9), np.uint8), np.ones((1, 2, 8, 9)))


def write_labels_tiff(path, labels, pixel_size=None, tile=16):
    tifffile.imwrite(path, labels, tile=(tile, tile), compression="zlib", photometric="minisblack",
                     **{k: v for k, v in tiff_options(pixel_size, "YX" if labels.ndim == 2 else "ZYX",
                                                       planes=len(labels) if labels.ndim == 3 else 1).items()
                        if k != "ome" or v})


@needs_zarr
def test_tiled_tiff_is_read_in_bands_of_whole_tiles(tmp_path, monkeypatch):
    """A tiled OME-TIFF with a pixel size: read band by band, each a whole number of tile rows and never the
    whole image, and the table is the oracle's, physical columns from the file's pixel size."""
    monkeypatch.setattr(measure, "BAND_PIXELS", 40 * 70)
    labels = blobs((100, 70), 20, seed=8, dtype=np.uint32)
    image = np.random.default_rng(9).integers(0, 4000, (100, 70)).astype(np.uint16)
    size = PixelSize(0.325, 0.325)
    write_labels_tiff(tmp_path / "labels.tif", labels, size)
    tifffile.imwrite(tmp_path / "image.tif", image, tile=(32, 32))
    reads = []
    band = measure._Input.band
    monkeypatch.setattr(measure._Input, "band", lambda self, plane, y0, y1: reads.append((self.role, y0, y1))
                        or band(self, plane, y0, y1))
    got = measure.measure_objects(tmp_path / "labels.tif", tmp_path / "image.tif")
    assert_same_table(got, oracle(labels, image, size))
    assert [(y0, y1) for role, y0, y1 in reads if role == "labels"] == [(0, 32), (32, 64), (64, 96), (96, 100)]


def test_a_file_in_one_strip_is_mapped_or_read_once_and_measured_in_bands(tmp_path, monkeypatch):
    """A TIFF of one strip (many writers' default): uncompressed, read by rows through a memory map; compressed,
    decoded once (the format allows no less) but measured in bands all the same."""
    monkeypatch.setattr(measure, "BAND_PIXELS", 10 * 70)
    labels = blobs((100, 70), 20, seed=21, dtype=np.uint32)
    tifffile.imwrite(tmp_path / "plain.tif", labels, rowsperstrip=100)
    tifffile.imwrite(tmp_path / "packed.tif", labels, rowsperstrip=100, compression="zlib")
    heights = []
    table = measure._band_table
    monkeypatch.setattr(measure, "_band_table", lambda rows, *rest: heights.append(rows.shape[0]) or table(rows, *rest))
    for name in ("plain.tif", "packed.tif"):
        assert_same_table(measure.measure_objects(tmp_path / name), oracle(labels))
    assert set(heights) == {10}
    assert isinstance(measure._open_file(tmp_path / "plain.tif", None, labels=True)[0].array, np.memmap)


def test_segment_outputs_pyramidal_tiff_and_ome_zarr_stack(tmp_path):
    """What segment writes: a pyramidal tiled BigTIFF (a side above 1024 px) with the pixel size, and an OME-Zarr
    stack numbered per plane with a translation."""
    labels = blobs((1040, 60), 30, seed=10, dtype=np.uint16)
    size = PixelSize(0.5, 0.25, "micrometer")
    writer = StreamingTiffWriter(tmp_path / "big.tif", labels.shape, np.uint16, pixel_size=size)
    writer.write(0, 0, 0, labels)
    writer.close()
    assert len(tifffile.TiffFile(tmp_path / "big.tif").pages[0].subifds) >= 1      # a pyramid indeed
    assert_same_table(measure.measure_objects(tmp_path / "big.tif"), oracle(labels, None, size))
    pytest.importorskip("zarr")
    from unet_fast.sinks import StreamingZarrWriter

    stack = np.stack([blobs((30, 40), 4, seed=s, dtype=np.uint32) for s in (11, 12)])
    placed = PixelSize(2.0, 2.0, "nanometer", translation=(0.0, 50.0, 60.0))
    writer = StreamingZarrWriter(tmp_path / "stack.ome.zarr", stack.shape, np.uint32, pixel_size=placed)
    for z in range(2):
        writer.write(z, 0, 0, stack[z])
    writer.close()
    assert_same_table(measure.measure_objects(tmp_path / "stack.ome.zarr"), oracle(stack, None, placed))


def test_files_that_are_no_instance_labels_are_refused_with_the_fix(tmp_path):
    tifffile.imwrite(tmp_path / "probabilities.tif", np.zeros((2, 8, 8), np.float32))
    tifffile.imwrite(tmp_path / "classes.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    writer = StreamingTiffWriter(tmp_path / "semantic.tif", (8, 8), np.uint8, provenance={"output": "labels"})
    writer.write(0, 0, 0, np.ones((8, 8), np.uint8))
    writer.close()
    (tmp_path / "labels.jpg").write_bytes(b"")
    for name, words in (("probabilities.tif", "holds floats"), ("classes.tif", "has 3 channels"),
                        ("semantic.tif", "holds class labels (segment --output labels)"), ("labels.jpg", "JPEG")):
        with pytest.raises(ValueError, match="probabilities.tif|classes.tif|semantic.tif|labels.jpg") as error:
            measure.measure_objects(tmp_path / name)
        assert words in str(error.value) and name in str(error.value)
    with pytest.raises(FileNotFoundError, match="nothing.tif"):
        measure.measure_objects(tmp_path / "nothing.tif")


# ---- the command line

def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def as_csv_table(rows, columns):
    """The rows of one file as the columns of a table, read back as numbers ("" left out)."""
    return {name: np.array([float(row[name]) for row in rows]) for name in columns}


@pytest.fixture
def labelled(tmp_path):
    """labels/ (a plane with a pixel size, a stack, and a plane without objects) and images/ of the same names
    (a 2-channel image, a stack, a grey PNG)."""
    from PIL import Image

    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    plane = blobs((40, 30), 8, seed=13)
    stack = np.stack([blobs((20, 25), 3, seed=s) for s in (14, 15)])
    empty = np.zeros((10, 12), np.uint8)
    write_labels_tiff(tmp_path / "labels" / "a.tif", plane, PixelSize(0.5, 0.5))
    write_labels_tiff(tmp_path / "labels" / "b.tif", stack)
    Image.fromarray(empty).save(tmp_path / "labels" / "c.png")
    rng = np.random.default_rng(16)
    images = {"a": rng.integers(0, 255, (2, 40, 30)).astype(np.uint8), "b": rng.normal(size=(2, 20, 25)),
              "c": rng.integers(0, 255, (10, 12)).astype(np.uint8)}
    tifffile.imwrite(tmp_path / "images" / "a.ome.tif", images["a"], metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "images" / "b.tif", images["b"].astype(np.float32), metadata={"axes": "ZYX"})
    Image.fromarray(images["c"]).save(tmp_path / "images" / "c.png")
    return tmp_path, {"a": plane, "b": stack, "c": empty}, images


def test_command_writes_objects_and_summary_tables(labelled, capsys):
    folder, labels, images = labelled
    out = folder / "measured"
    assert cli.main(["measure", "-i", str(folder / "labels"), "--images", str(folder / "images"), "-o",
                     str(out)]) == 0
    printed = capsys.readouterr()
    assert "objects" in printed.out and printed.err == ""
    rows = read_csv(out / "objects.csv")
    header = list(rows[0])
    assert header[:4] == ["file", "plane", "label", "area_px"] and "area_um2" in header
    assert [h for h in header if h.startswith("intensity_")][:5] == [
        "intensity_mean_c0", "intensity_min_c0", "intensity_max_c0", "intensity_sum_c0", "intensity_mean_c1"]
    for name, size in (("a", PixelSize(0.5, 0.5)), ("b", None)):
        mine = [row for row in rows if row["file"] == str(folder / "labels" / f"{name}.tif")]
        expected = oracle(labels[name], images[name].astype(np.float32), size)
        expected = {key + ("_c0" if key.startswith("intensity") and not key[-3:-1] == "_c" else ""): value
                    for key, value in expected.items()}      # a one-channel image in a table of two
        got = as_csv_table(mine, expected)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], np.asarray(value, np.float64), rtol=1e-6, err_msg=key)
        if size is None:
            assert {row["area_um2"] for row in mine} == {""}
        else:
            assert {row["plane"] for row in mine} == {""}
    assert not any(row["file"].endswith("c.png") for row in rows)            # no objects, no rows
    summary = read_csv(out / "summary.csv")
    assert [row["file"] for row in summary] == [str(folder / "labels" / n) for n in ("a.tif", "b.tif", "c.png")]
    assert [row["image_file"] for row in summary] == [str(folder / "images" / n)
                                                       for n in ("a.ome.tif", "b.tif", "c.png")]
    for row, name in zip(summary, "abc"):
        areas = np.array(oracle(labels[name])["area_px"])
        assert int(row["objects"]) == len(areas) and int(row["area_total_px"]) == areas.sum()
        assert row["planes"] == ("2" if name == "b" else "1")
        if len(areas):
            assert float(row["area_mean_px"]) == pytest.approx(areas.mean())
            assert float(row["area_median_px"]) == pytest.approx(np.median(areas))
        else:
            assert row["area_mean_px"] == row["area_median_px"] == ""
    assert float(summary[0]["area_total_um2"]) == pytest.approx(0.25 * labels["a"].astype(bool).sum())
    assert summary[1]["area_total_um2"] == "" and summary[0]["pixel_size_x_um"] == "0.5"


def test_command_on_an_image_without_objects_writes_a_header(tmp_path):
    tifffile.imwrite(tmp_path / "none.tif", np.zeros((5, 5), np.uint16))
    assert cli.main(["measure", "-i", str(tmp_path / "none.tif"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "objects.csv").read_text() == \
        "file,label,area_px,centroid_y_px,centroid_x_px,bbox_min_row,bbox_min_col,bbox_max_row,bbox_max_col\n"
    assert read_csv(tmp_path / "out" / "summary.csv")[0]["objects"] == "0"


def test_label_suffix_pairs_labels_with_their_images(tmp_path, capsys):
    labels = blobs((12, 14), 3, seed=17)
    image = np.arange(12 * 14, dtype=np.uint16).reshape(12, 14)
    tifffile.imwrite(tmp_path / "cells_labels.tif", labels)
    tifffile.imwrite(tmp_path / "cells.tif", image)
    out = str(tmp_path / "out")
    assert cli.main(["measure", "-i", str(tmp_path / "cells_labels.tif"), "--images", str(tmp_path / "cells.tif"),
                     "-o", out]) == 2
    assert "no image for 1 label file" in capsys.readouterr().err
    assert cli.main(["measure", "-i", str(tmp_path / "cells_labels.tif"), "--images", str(tmp_path / "cells.tif"),
                     "--label-suffix", "_labels", "-o", out]) == 0
    rows = read_csv(tmp_path / "out" / "objects.csv")
    assert [float(r["intensity_sum"]) for r in rows] == oracle(labels, image)["intensity_sum"]


def test_recursive_pairs_each_plate_with_its_own_image(tmp_path, capsys):
    """segment -r's layout: every plate has an A01, so only the subfolder tells whose image is whose; segment's
    overlays there are pictures, passed over, not FAILED label files."""
    from unet_fast.overlays import write_overlay

    labels, images = {}, {}
    for k, plate in enumerate(("p1", "p2/deeper")):
        labels[plate] = blobs((11, 13), 3 + k, seed=40 + k)
        images[plate] = np.random.default_rng(k).integers(0, 1000, (11, 13)).astype(np.uint16)
        for root, array in (("out", labels[plate]), ("plates", images[plate])):
            (tmp_path / root / plate).mkdir(parents=True)
            tifffile.imwrite(tmp_path / root / plate / "A01.tif", array)
    labels["."], images["."] = blobs((7, 9), 2, seed=42), np.full((7, 9), 5, np.uint16)   # unique name: found
    tifffile.imwrite(tmp_path / "out" / "B02.tif", labels["."])                          # in another folder
    tifffile.imwrite(tmp_path / "plates" / "p2" / "B02.tif", images["."])
    (tmp_path / "out" / "overlays" / "p1").mkdir(parents=True)
    write_overlay(tmp_path / "out" / "overlays" / "p1" / "A01.png", images["p1"], labels["p1"])
    out = tmp_path / "tables"
    arguments = ["measure", "-i", str(tmp_path / "out"), "--images", str(tmp_path / "plates"), "-o", str(out)]
    assert cli.main(arguments) == 2          # without -r: plates/ holds no image directly
    assert "plates" in capsys.readouterr().err
    assert cli.main(arguments[:1] + ["-r", "-i", str(tmp_path / "out" / "p1" / "A01.tif"),
                                     str(tmp_path / "out" / "p2" / "deeper" / "A01.tif")] + arguments[3:]) == 2
    assert "ambiguous" in capsys.readouterr().err     # files named: no subfolder to tell them apart
    assert cli.main(arguments + ["-r"]) == 0
    captured = capsys.readouterr()
    assert "FAILED" not in captured.err and "1 overlay(s)" in captured.out
    rows = read_csv(out / "objects.csv")
    for plate, name in (("p1", "A01.tif"), ("p2/deeper", "A01.tif"), (".", "B02.tif")):
        mine = [r for r in rows if r["file"] == str(tmp_path / "out" / plate / name)]
        assert [float(r["intensity_sum"]) for r in mine] == oracle(labels[plate], images[plate])["intensity_sum"]
    summary = {row["file"]: row["image_file"] for row in read_csv(out / "summary.csv")}
    assert summary == {str(tmp_path / "out" / "p1" / "A01.tif"): str(tmp_path / "plates" / "p1" / "A01.tif"),
                       str(tmp_path / "out" / "p2" / "deeper" / "A01.tif"):
                           str(tmp_path / "plates" / "p2" / "deeper" / "A01.tif"),
                       str(tmp_path / "out" / "B02.tif"): str(tmp_path / "plates" / "p2" / "B02.tif")}


def test_inputs_given_with_several_flags_are_all_measured(tmp_path):
    """-i a -i b measured b alone (argparse's nargs="+" keeps the last flag's), as segment segmented only the last."""
    for name, seed in (("a", 50), ("b", 51), ("c", 52)):
        tifffile.imwrite(tmp_path / f"{name}.tif", blobs((9, 10), 2, seed=seed))
    assert cli.main(["measure", "-i", str(tmp_path / "a.tif"), "-i", str(tmp_path / "b.tif"), str(tmp_path / "c.tif"),
                     "-o", str(tmp_path / "out")]) == 0
    assert [row["file"] for row in read_csv(tmp_path / "out" / "summary.csv")] == \
        [str(tmp_path / f"{name}.tif") for name in "abc"]


def test_tables_the_user_wrote_are_never_replaced(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "l.tif", blobs((9, 9), 2, seed=18))
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("my,own\n1,2\n")
    arguments = ["measure", "-i", str(tmp_path / "l.tif"), "-o", str(out)]
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert "summary.csv" in err and "no table unet-fast measure wrote" in err
    assert (out / "summary.csv").read_text() == "my,own\n1,2\n" and not (out / "objects.csv").exists()
    (out / "summary.csv").unlink()
    assert cli.main(arguments) == 0
    first = (out / "objects.csv").read_text()
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((9, 9), np.uint8))
    assert cli.main(arguments) == 0                          # its own tables it replaces
    assert (out / "objects.csv").read_text() != first and len((out / "objects.csv").read_text().splitlines()) == 1
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []     # no temporaries left


def test_bad_inputs_give_one_line_each_and_the_right_status(tmp_path, capsys):
    good = blobs((16, 16), 3, seed=19)
    tifffile.imwrite(tmp_path / "good.tif", good)
    tifffile.imwrite(tmp_path / "probabilities.tif", np.random.default_rng(0).random((2, 16, 16), np.float32))
    tifffile.imwrite(tmp_path / "negative.tif", -good.astype(np.int16))
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "truncated.tif").write_bytes(data[:len(data) // 2])
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"

    def run(*arguments):
        status = cli.main(["measure", *arguments])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return status, err

    status, err = run("-i", str(tmp_path / "missing.tif"), "-o", str(out))
    assert status == 2 and "missing.tif: no such file" in err and len(err.splitlines()) == 1
    status, err = run("-i", str(tmp_path / "empty"), "-o", str(out))
    assert status == 2 and "folder holds no image files" in err
    status, err = run("-i", str(tmp_path / "good.tif"), "-o", str(tmp_path / "table.csv"))
    assert status == 2 and "-o is a folder" in err and not (tmp_path / "table.csv").exists()
    status, err = run("-i", str(tmp_path / "good.tif"), "--label-suffix", "_x", "-o", str(out))
    assert status == 2 and "--images" in err
    status, err = run("-i", str(tmp_path / "probabilities.tif"), str(tmp_path / "negative.tif"), "-o", str(out))
    assert status == 1 and "nothing written" in err and not out.exists()
    status, err = run("-i", str(tmp_path / "*.tif"), str(tmp_path / "gone.tif"), "-o", str(out))
    assert status == 1
    failed = {line.split()[1].rstrip(":"): line for line in err.splitlines() if line.startswith("FAILED")}
    assert set(failed) == {str(tmp_path / n) for n in ("gone.tif", "negative.tif", "probabilities.tif",
                                                      "truncated.tif")}
    assert "holds floats" in failed[str(tmp_path / "probabilities.tif")]
    assert "negative values" in failed[str(tmp_path / "negative.tif")]
    assert [row["file"] for row in read_csv(out / "summary.csv")] == [str(tmp_path / "good.tif")]
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "good.tif", np.zeros((16, 17), np.uint8))
    status, err = run("-i", str(tmp_path / "good.tif"), "--images", str(tmp_path / "images"), "-o", str(out))
    assert status == 1 and str(tmp_path / "good.tif") in err and str(tmp_path / "images" / "good.tif") in err
    assert "same size" in err


def test_label_images_are_measured_like_their_connected_components_say(tmp_path):
    """An end-to-end check of the meaning of a row: each object of a label image made by scipy.ndimage.label
    has the area ndimage.sum counts and the centre ndimage.center_of_mass finds."""
    mask = blobs((50, 40), 10, seed=20) > 0
    labels, count = ndimage.label(mask)
    got = measure.measure_objects(labels)
    index = np.arange(1, count + 1)
    assert list(got["label"]) == list(index)
    assert list(got["area_px"]) == ndimage.sum(mask, labels, index).astype(int).tolist()
    centres = np.array(ndimage.center_of_mass(mask, labels, index))
    np.testing.assert_allclose(np.stack([got["centroid_y_px"], got["centroid_x_px"]], 1), centres, rtol=1e-12)


def test_an_intensity_image_given_as_labels_is_measured_with_a_warning(tmp_path):
    """A grey-value image without unet_fast's provenance cannot be refused by its type (another tool's uint16
    instance labels look the same), but its values lie scattered over the image, each over a bounding box it
    hardly fills: measure says so, naming -i and --images; real instance labels (discs, a thin rod) draw no word."""
    import tifffile

    from unet_fast import measure

    yy, xx = np.mgrid[:60, :70]
    grey = (1000 + 40 * np.sin(yy / 3.0) * np.cos(xx / 4.0) + np.random.default_rng(0).integers(0, 30, (60, 70)))
    tifffile.imwrite(tmp_path / "grey.tif", grey.astype(np.uint16))
    cells = np.zeros((60, 70), np.uint16)
    for k, (cy, cx) in enumerate([(8, 8), (8, 30), (8, 52), (30, 8), (30, 30), (30, 52), (50, 8), (50, 30),
                                  (50, 52), (20, 64)], 1):
        cells[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = k
    cells[np.arange(40, 50), np.arange(60, 70)] = 11             # a thin diagonal rod: fills 10 % of its box
    tifffile.imwrite(tmp_path / "cells.tif", cells)
    for name, warned in (("grey.tif", True), ("cells.tif", False)):
        lines = []
        measure.run([str(tmp_path / name)], tmp_path / f"out-{Path(name).stem}", log=lambda line, file=None: lines.append(line))
        said = [line for line in lines if line.startswith("warning:")]
        assert len(said) == warned, lines
        if warned:
            assert "fill a median" in said[0] and "give instance labels (segment --output instances) to -i, and " \
                                                  "the image to --images" in said[0]


# ---- found in review: each test below failed before its fix

def test_a_one_bit_png_mask_is_refused_as_a_mask(tmp_path):
    """A 1-bit PNG declares 8 bits a pixel but decodes to bool: it was measured as one object labelled True."""
    from PIL import Image

    mask = blobs((20, 24), 4, seed=60) > 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert Image.open(tmp_path / "mask.png").mode == "1"
    with pytest.raises(ValueError, match=r"mask.png is a mask \(bool\).*ndimage.label"):
        measure.measure_objects(tmp_path / "mask.png")


def test_inf_and_nan_pixels_give_their_values_without_numpy_warnings(small_bands):
    """inf and -inf in one object (one band, and two bands apart) make its sum and mean NaN, as documented, without
    numpy's 'invalid value encountered in reduceat', which the command printed as an anonymous warning."""
    labels = np.zeros((20, 23), np.uint8)
    labels[0, :4] = 1                  # inf and -inf in one run
    labels[2:12, 5] = 2                # inf and -inf in bands apart: summed where the bands' tables merge
    labels[15, 15] = 3
    image = np.ones((20, 23))
    image[0, 1], image[0, 2] = np.inf, -np.inf
    image[2, 5], image[11, 5] = np.inf, -np.inf
    image[15, 15] = 1e308
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = measure.measure_objects(labels, image)
    assert np.isnan(got["intensity_sum"][:2]).all() and np.isnan(got["intensity_mean"][:2]).all()
    assert list(got["intensity_min"][:2]) == [-np.inf, -np.inf] and list(got["intensity_max"][:2]) == [np.inf] * 2
    assert got["intensity_sum"][2] == 1e308


def damage_a_tile(path, tile=5):
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[tile]
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = bytes(16)
    path.write_bytes(bytes(data))


def test_a_damaged_file_is_named_in_its_failed_line(tmp_path, capsys):
    """A damaged tile of the intensity image gave 'FAILED labels.tif: zlib.error: ...', as if the labels were
    damaged: the line names the file that failed, and where."""
    labels = blobs((64, 64), 6, seed=61)
    (tmp_path / "labels").mkdir()
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "labels" / "a.tif", labels, tile=(16, 16), compression="zlib")
    tifffile.imwrite(tmp_path / "images" / "a.tif", labels * 3, tile=(16, 16), compression="zlib")
    damage_a_tile(tmp_path / "images" / "a.tif")
    assert cli.main(["measure", "-i", str(tmp_path / "labels"), "--images", str(tmp_path / "images"), "-o",
                     str(tmp_path / "out")]) == 1
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {tmp_path / 'labels' / 'a.tif'}: "
                                                     f"{tmp_path / 'images' / 'a.tif'}: rows 0-63 cannot be read")
    with pytest.raises(ValueError, match=r"images/a.tif: rows 0-63 cannot be read: zlib.error"):
        measure.measure_objects(tmp_path / "labels" / "a.tif", tmp_path / "images" / "a.tif")


def test_a_summary_that_cannot_be_written_leaves_both_earlier_tables(tmp_path, monkeypatch):
    """summary.csv failing to be written (a full disk) left this run's objects.csv beside the earlier run's
    summary.csv, which describes other files: now both earlier tables stay."""
    for name, seed in (("a", 62), ("b", 63)):
        tifffile.imwrite(tmp_path / f"{name}.tif", blobs((9, 10), 2, seed=seed))
    out = tmp_path / "out"
    measure.run([str(tmp_path / "a.tif")], out, log=lambda *args, **kwargs: None)
    before = {name: (out / name).read_text() for name in ("objects.csv", "summary.csv")}

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(measure.image_io, "write_bytes_atomically", full_disk)
    with pytest.raises(OSError, match="No space left"):
        measure.run([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")], out, log=lambda *args, **kwargs: None)
    assert {name: (out / name).read_text() for name in ("objects.csv", "summary.csv")} == before
    assert sorted(p.name for p in out.iterdir()) == ["objects.csv", "summary.csv"]


def test_a_table_the_user_annotated_is_never_replaced(tmp_path, capsys):
    """A table that starts as measure's but holds a column measure does not write (the user's notes on each
    object) is the user's: it was replaced, its notes lost."""
    tifffile.imwrite(tmp_path / "l.tif", blobs((9, 9), 2, seed=64))
    out = tmp_path / "out"
    arguments = ["measure", "-i", str(tmp_path / "l.tif"), "-o", str(out)]
    assert cli.main(arguments) == 0
    assert measure.written_by_measure(out / "objects.csv") and measure.written_by_measure(out / "summary.csv")
    lines = (out / "objects.csv").read_text().splitlines()
    annotated = "\n".join([lines[0] + ",notes"] + [line + ",mitotic" for line in lines[1:]]) + "\n"
    (out / "objects.csv").write_text(annotated)
    assert cli.main(arguments) == 2
    assert "objects.csv' exists and is no table unet-fast measure wrote" in capsys.readouterr().err
    assert (out / "objects.csv").read_text() == annotated
    (out / "objects.csv").unlink()
    (out / "summary.csv").write_text("file,image_file,planes,objects,area_total_px,comment\n")
    assert cli.main(arguments) == 2 and not (out / "objects.csv").exists()
    for header in ("file,plane,label,area_px,area_nm2,centroid_y_px,centroid_x_px,centroid_y_nm,centroid_x_nm,"
                   "bbox_min_row,bbox_min_col,bbox_max_row,bbox_max_col,intensity_mean_c0,intensity_sum_c12\r\n",
                   "file,image_file,planes,objects,area_total_px,area_mean_px,area_median_px,area_total_angstrom2,"
                   "area_mean_angstrom2,area_median_angstrom2,pixel_size_y_angstrom,pixel_size_x_angstrom\n"):
        (tmp_path / "t.csv").write_text(header)
        assert measure.written_by_measure(tmp_path / "t.csv"), header


def test_python_arguments_are_checked_naming_them(tmp_path):
    """numpy numbers as pixel sizes (read from metadata) were refused; max_pixels, label_suffix and output_dir of
    the wrong type, or a folder given as one image, failed deep inside with Python's own errors."""
    labels = np.zeros((4, 4), np.uint8)
    labels[1:3, 1:3] = 1
    assert list(measure.measure_objects(labels, pixel_size=np.float32(0.5))["area_um2"]) == [1.0]
    assert list(measure.measure_objects(labels, pixel_size=np.array([0.5, 0.25]))["area_um2"]) == [0.5]
    with pytest.raises(ValueError, match="max_pixels must be a positive integer or None, got 'many'"):
        measure.measure_objects(labels, max_pixels="many")
    (tmp_path / "folder.tif").mkdir()
    for argument in ("labels", "image"):
        with pytest.raises(ValueError, match=f"{argument}: .*folder.tif is a folder, not an image file"):
            measure.measure_objects(*((tmp_path / "folder.tif",) if argument == "labels" else
                                      (labels, tmp_path / "folder.tif")))
    tifffile.imwrite(tmp_path / "l.tif", labels)
    for kwargs, words in (({"output_dir": None}, "output_dir must be the path of a folder"),
                          ({"label_suffix": 5, "images": tmp_path / "l.tif"}, "label_suffix must be a string"),
                          ({"max_pixels": 0}, "max_pixels must be a positive integer"),
                          ({"inputs": []}, "no label image given")):
        arguments = {"inputs": [tmp_path / "l.tif"], "output_dir": tmp_path / "out", **kwargs}
        with pytest.raises(measure.BadArgument, match=words):
            measure.run(arguments.pop("inputs"), arguments.pop("output_dir"), **arguments)
    assert not (tmp_path / "out").exists()


@needs_zarr
def test_a_stack_of_one_plane_pairs_with_a_plane(tmp_path):
    """An OME-Zarr of axes z, y, x with one plane (a 2-D image some writers save so) is that plane: it was refused
    as an image of another size than its 2-D labels ('in 1 planes' against 'one plane')."""
    from unet_fast.sinks import StreamingZarrWriter

    labels = blobs((20, 24), 4, seed=65)
    image = np.random.default_rng(66).integers(0, 500, (1, 20, 24)).astype(np.uint16)
    writer = StreamingZarrWriter(tmp_path / "image.ome.zarr", image.shape, np.uint16)
    writer.write(0, 0, 0, image[0])
    writer.close()
    assert measure._open_file(tmp_path / "image.ome.zarr", None, labels=False)[0].planes == 1
    assert_same_table(measure.measure_objects(labels, tmp_path / "image.ome.zarr"), oracle(labels, image[0]))
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert_same_table(measure.measure_objects(tmp_path / "image.ome.zarr", tmp_path / "labels.tif"),
                      oracle(image, labels[None]))


def test_a_pattern_that_matches_the_tables_of_an_earlier_run_passes_over_them(tmp_path, capsys):
    """-i 'out/*' -o out, run twice: the second run's pattern matched the first run's tables, and the run was
    refused ('would overwrite the input'); they are passed over with a note, and replaced."""
    (tmp_path / "out").mkdir()
    tifffile.imwrite(tmp_path / "out" / "a.tif", blobs((9, 10), 2, seed=67))
    arguments = ["measure", "-i", str(tmp_path / "out" / "*"), "-o", str(tmp_path / "out")]
    assert cli.main(arguments) == 0
    first = (tmp_path / "out" / "objects.csv").read_text()
    capsys.readouterr()
    assert cli.main(arguments) == 0
    captured = capsys.readouterr()
    assert "2 table(s) measure wrote passed over" in captured.out and captured.err == ""
    assert (tmp_path / "out" / "objects.csv").read_text() == first
    (tmp_path / "out" / "summary.csv").write_text("my,own\n")       # not measure's: an input, refused as before
    assert cli.main(arguments) == 2 and (tmp_path / "out" / "summary.csv").read_text() == "my,own\n"


def test_stacks_with_a_z_step_get_the_physical_z_of_each_plane(tmp_path):
    """An OME-TIFF stack recording its z step and first plane's position: each object's centroid_z is its
    plane's depth (as viewers place the plane), the summary gives the step; a 2-D file beside it has none."""
    stack = np.zeros((3, 12, 10), np.uint16)
    stack[0, 1:4, 1:4], stack[1, 5:9, 2:6], stack[2, 1:3, 6:9], stack[2, 8:11, 1:3] = 1, 1, 1, 2
    size = PixelSize(0.5, 0.5, z=2.0, translation=(10.0, 3.0, 4.0))
    write_labels_tiff(tmp_path / "stack.tif", stack, size)
    write_labels_tiff(tmp_path / "flat.tif", stack[1], PixelSize(0.5, 0.5))
    got = measure.measure_objects(tmp_path / "stack.tif")
    np.testing.assert_array_equal(got["centroid_z_um"], [10.0, 12.0, 14.0, 14.0])
    np.testing.assert_allclose(got["centroid_y_um"][1], 6.5 * 0.5 + 3.0)
    assert "centroid_z_um" not in measure.measure_objects(tmp_path / "flat.tif")
    assert "centroid_z_um" not in measure.measure_objects(stack, pixel_size=PixelSize(0.5, 0.5))
    assert cli.main(["measure", "-i", str(tmp_path / "stack.tif"), str(tmp_path / "flat.tif"),
                     "-o", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "objects.csv")))
    assert sorted((r["file"][-9:], r["plane"], r["centroid_z_um"]) for r in rows) == [
        ("/flat.tif", "", ""), ("stack.tif", "0", "10.0"), ("stack.tif", "1", "12.0"), ("stack.tif", "2", "14.0"),
        ("stack.tif", "2", "14.0")]
    summary = {r["file"][-9:]: r["pixel_size_z_um"] for r in csv.DictReader(open(tmp_path / "out" / "summary.csv"))}
    assert summary == {"stack.tif": "2.0", "/flat.tif": ""}
    assert measure.written_by_measure(tmp_path / "out" / "objects.csv")     # a second run may replace them
    assert measure.written_by_measure(tmp_path / "out" / "summary.csv")


def test_labels_beside_their_images_in_one_folder(tmp_path):
    """-i data/ --images data/ --label-suffix _labels: the images in the folder given to both are not label files
    without their images (exit 2 before), they are the images."""
    labels = np.zeros((12, 10), np.uint16)
    labels[2:6, 2:6], labels[7:11, 5:9] = 1, 2
    image = np.arange(120, dtype=np.uint16).reshape(12, 10)
    tifffile.imwrite(tmp_path / "a_labels.tif", labels)
    tifffile.imwrite(tmp_path / "a.tif", image)
    assert cli.main(["measure", "-i", str(tmp_path), "--images", str(tmp_path), "--label-suffix", "_labels",
                     "-o", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "objects.csv")))
    assert [(r["file"][-12:], r["label"], r["intensity_sum"]) for r in rows] == [
        ("a_labels.tif", "1", str(int(image[2:6, 2:6].sum()))), ("a_labels.tif", "2", str(int(image[7:11, 5:9].sum())))]
