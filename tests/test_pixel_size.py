"""Physical pixel sizes: read from OME-TIFF, ImageJ TIFF and OME-Zarr, kept from input to every output,
recorded by `unet-fast train`, compared by `unet-fast segment`."""
import importlib.util
import xml.etree.ElementTree as ElementTree
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch

import unet_fast
from unet_fast import cli, image_io, sinks
from unet_fast.inference import predict_tiled
from unet_fast.napari.reader import read_ome_zarr
from unet_fast.pixel_size import PixelSize, common_pixel_size, in_unit, read_pixel_size, scale_warning
from optional_deps import needs_zarr

ANISOTROPIC = PixelSize(y=0.5, x=0.25, unit="micrometer")


def pixels(shape=(70, 90), seed=0):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def write_ome_tiff(path, image, size: PixelSize, axes="YX"):
    symbol = {"micrometer": "µm", "nanometer": "nm"}[size.unit]
    metadata = {"axes": axes, "PhysicalSizeX": size.x, "PhysicalSizeY": size.y, "PhysicalSizeXUnit": symbol,
                "PhysicalSizeYUnit": symbol}
    if size.z is not None:
        metadata.update(PhysicalSizeZ=size.z, PhysicalSizeZUnit=symbol)
    tifffile.imwrite(path, image, metadata=metadata)


def write_imagej_tiff(path, image, size: PixelSize, axes="YX"):
    metadata = {"unit": "um", "axes": axes, **({"spacing": size.z} if size.z else {})}
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / size.x, 1 / size.y), metadata=metadata)


def write_ome_zarr(path, image, size: PixelSize):
    writer = sinks.StreamingZarrWriter(path, image.shape, image.dtype, pixel_size=size)
    for plane in range(image.shape[0] if image.ndim == 3 else 1):
        writer.write(plane, 0, 0, image[plane] if image.ndim == 3 else image)
    writer.close()


WRITERS = {"ome-tiff": (write_ome_tiff, "in.ome.tif"), "imagej-tiff": (write_imagej_tiff, "in.tif"),
           "ome-zarr": (write_ome_zarr, "in.ome.zarr")}


@pytest.mark.parametrize("kind", [pytest.param(kind, marks=needs_zarr) if kind == "ome-zarr" else kind
                                  for kind in WRITERS])
def test_each_input_format_declares_its_pixel_size(tmp_path, kind):
    write, name = WRITERS[kind]
    write(tmp_path / name, pixels(), ANISOTROPIC)
    assert read_pixel_size(tmp_path / name) == ANISOTROPIC


def test_files_without_a_physical_size_give_none(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", pixels())
    tifffile.imwrite(tmp_path / "uncalibrated.tif", pixels(), imagej=True)     # ImageJ, no unit
    image_io.write_image(tmp_path / "photo.png", pixels())
    assert [read_pixel_size(tmp_path / n) for n in ("plain.tif", "uncalibrated.tif", "photo.png")] == [None] * 3


def test_a_time_series_of_one_plane_has_no_plane_spacing(tmp_path):
    """tifffile reads t, z, y, x with one plane as TYX, segmented as a stack: its time points are no planes
    PhysicalSizeZ apart. Three planes keep their spacing."""
    for planes in (1, 3):
        tifffile.imwrite(tmp_path / f"t{planes}.ome.tif", pixels((4, planes, 30, 40)), ome=True,
                         metadata={"axes": "TZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0})
    assert read_pixel_size(tmp_path / "t1.ome.tif") == PixelSize(0.5, 0.5)
    assert read_pixel_size(tmp_path / "t3.ome.tif") == PixelSize(0.5, 0.5, z=2.0)


def test_an_imagej_time_series_has_no_plane_spacing(tmp_path):
    """ImageJ writes spacing= for any stack whose voxel depth is set, time-lapses too; a time series (frames, no
    slices) is segmented as a stack whose time points are no planes that far apart, as OME-TIFF's rule above."""
    for axes, shape in (("TYX", (4, 30, 40)), ("TZYX", (2, 3, 30, 40)), ("ZYX", (3, 30, 40))):
        tifffile.imwrite(tmp_path / f"{axes}.tif", pixels(shape), imagej=True, resolution=(2, 2),
                         metadata={"unit": "um", "axes": axes, "spacing": 2.0})
    assert read_pixel_size(tmp_path / "TYX.tif") == PixelSize(0.5, 0.5)
    for stack in ("TZYX.tif", "ZYX.tif"):
        assert read_pixel_size(tmp_path / stack) == PixelSize(0.5, 0.5, z=2.0)


@pytest.mark.parametrize("unit, expected", [("\\u00B5m", "micrometer"), ("\\u00b5m", "micrometer"),
                                            ("micron", "micrometer"), ("nm", "nanometer")])
def test_imagej_units_escaped_as_imagej_reads_them(tmp_path, unit, expected):
    """ImageJ reads its description as Java properties, where \\u00B5m is µm; TIFF descriptions are ASCII (tifffile
    refuses µm), so that is how scripts write micrometres for ImageJ, and it was read as no unit at all."""
    tifffile.imwrite(tmp_path / "a.tif", pixels(), imagej=True, resolution=(4, 2), metadata={"unit": unit})
    assert read_pixel_size(tmp_path / "a.tif") == PixelSize(0.5, 0.25, expected)


def test_malformed_ome_xml_gives_no_pixel_size(tmp_path):
    """tifffile reads the pixels of an OME-TIFF whose OME-XML does not parse (a raw & in a name), as a plain TIFF;
    its pixel size raised ParseError, failing the image (and `unet-fast train` as a whole) for its metadata."""
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0" Name="a & b"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="90" '
           'SizeY="70" SizeC="1" SizeZ="1" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5"><TiffData/></Pixels>'
           '</Image></OME>')
    tifffile.imwrite(tmp_path / "a.ome.tif", pixels(), description=xml, metadata=None)
    assert image_io.image_info(tmp_path / "a.ome.tif").shape == (70, 90)
    assert read_pixel_size(tmp_path / "a.ome.tif") is None


def test_stack_spacing_and_nanometers(tmp_path):
    size = PixelSize(y=40.0, x=40.0, unit="nanometer", z=250.0)
    write_ome_tiff(tmp_path / "em.ome.tif", pixels((3, 30, 40)), size, axes="ZYX")
    write_imagej_tiff(tmp_path / "ij.tif", pixels((3, 30, 40)), PixelSize(0.04, 0.04, z=0.25), axes="ZYX")
    assert read_pixel_size(tmp_path / "em.ome.tif") == size
    assert read_pixel_size(tmp_path / "ij.tif") == PixelSize(0.04, 0.04, "micrometer", z=0.25)


def test_y_and_x_in_different_units_are_converted_to_x_s(tmp_path):
    tifffile.imwrite(tmp_path / "mixed.ome.tif", pixels((2, 30, 40)), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 500,
                               "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 0.002, "PhysicalSizeZUnit": "mm"})
    assert read_pixel_size(tmp_path / "mixed.ome.tif") == PixelSize(0.5, 0.25, "micrometer", z=2.0)
    tifffile.imwrite(tmp_path / "unknown.ome.tif", pixels(), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": "pc"})
    assert read_pixel_size(tmp_path / "unknown.ome.tif") is None
    if importlib.util.find_spec("zarr") is not None:
        write_ome_zarr(tmp_path / "a.ome.zarr", pixels(), ANISOTROPIC)
        edit_multiscale(tmp_path / "a.ome.zarr", lambda m: (m["axes"][0].update(unit="nanometer"),
                                                            m["datasets"][0]["coordinateTransformations"][0].update(
                                                                scale=[500.0, 0.25])))
        assert read_pixel_size(tmp_path / "a.ome.zarr") == ANISOTROPIC



@pytest.mark.parametrize("unit", ["pm", "in", "reference frame"])
def test_a_plane_spacing_in_a_unit_unet_fast_does_not_know_counts_as_none(tmp_path, unit):
    """It was taken to be in x's unit: 2 picometres (or inches) between planes read as 2 micrometres, and
    written into every output."""
    tifffile.imwrite(tmp_path / "a.ome.tif", pixels((2, 30, 40)), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0,
                               "PhysicalSizeZUnit": unit})
    assert read_pixel_size(tmp_path / "a.ome.tif") == PixelSize(0.5, 0.25, "micrometer", z=None)


def test_a_declared_size_that_is_no_length_counts_as_none(tmp_path):
    """PhysicalSizeX="0" (written for uncalibrated images), NaN or a negative scale used to raise, and segment
    failed the image for its metadata alone; Bio-Formats ignores such sizes, and so does unet_fast now."""
    for i, value in enumerate((0, float("nan"), -0.5, "abc")):
        tifffile.imwrite(tmp_path / f"{i}.ome.tif", pixels(), ome=True,
                         metadata={"axes": "YX", "PhysicalSizeX": value, "PhysicalSizeY": value})
        assert read_pixel_size(tmp_path / f"{i}.ome.tif") is None
    tifffile.imwrite(tmp_path / "z.ome.tif", pixels((2, 30, 40)), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 0})
    assert read_pixel_size(tmp_path / "z.ome.tif") == PixelSize(0.5, 0.5)       # only the bad z step is dropped
    tifffile.imwrite(tmp_path / "ij.tif", pixels((2, 30, 40)), imagej=True, resolution=(2, 2),
                     metadata={"unit": "um", "axes": "ZYX", "spacing": -1.0})
    assert read_pixel_size(tmp_path / "ij.tif") == PixelSize(0.5, 0.5)
    if importlib.util.find_spec("zarr") is not None:
        write_ome_zarr(tmp_path / "a.ome.zarr", pixels(), ANISOTROPIC)
        group = __import__("zarr").open_group(str(tmp_path / "a.ome.zarr"), mode="r+")
        multiscales = group.attrs["multiscales"]
        multiscales[0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [-0.5, 0.0]
        group.attrs["multiscales"] = multiscales
        assert read_pixel_size(tmp_path / "a.ome.zarr") is None


def edit_multiscale(path, change):
    group = __import__("zarr").open_group(str(path), mode="r+")
    multiscales = group.attrs["multiscales"]
    change(multiscales[0])
    group.attrs["multiscales"] = multiscales


@needs_zarr
def test_the_scale_of_the_whole_multiscale_counts_too(tmp_path):
    """NGFF 0.4 lets a multiscale carry transformations applied after each dataset's; they were ignored, and an
    image of 0.5 x 0.25 um pixels (scale 1 per dataset, 0.5 x 0.25 for all) was read as 1 x 1 um."""
    from unet_fast.ome_zarr import open_ome_zarr

    write_ome_zarr(tmp_path / "a.ome.zarr", pixels(), PixelSize(1.0, 1.0))
    edit_multiscale(tmp_path / "a.ome.zarr", lambda entry: entry.update(coordinateTransformations=[
        {"type": "scale", "scale": [0.5, 0.25]}, {"type": "translation", "translation": [10.0, 20.0]}]))
    assert read_pixel_size(tmp_path / "a.ome.zarr") == replace(ANISOTROPIC, translation=(0.0, 10.0, 20.0))
    assert open_ome_zarr(tmp_path / "a.ome.zarr").translation == [10.0, 20.0]
    assert common_pixel_size([tmp_path / "a.ome.zarr"])[0] == ANISOTROPIC     # a model records no translation


@needs_zarr
@pytest.mark.parametrize("change, detail", [
    (lambda entry: entry.update(datasets=[]), "it lists no datasets"),
    (lambda entry: entry["datasets"][0].update(path="7"), "its dataset '7' is no array of the group"),
    (lambda entry: entry["axes"].insert(0, {"name": "z", "type": "space"}), "it names 3 axes for an array of 2"),
    (lambda entry: entry.pop("axes"), "no 'axes'"),
    (lambda entry: entry["datasets"][0]["coordinateTransformations"][0].update(scale=[0.5]),
     "a scale or translation of 1, 2 numbers for 2 axes"),
    (lambda entry: entry["datasets"][0]["coordinateTransformations"][0].update(scale=None, path="scale.bin"),
     "not given inline"),
])
def test_malformed_ome_zarr_metadata_is_named(tmp_path, change, detail):
    """It used to fail with a bare IndexError or KeyError (segment: "FAILED x.ome.zarr: IndexError: tuple index
    out of range"), or, for a short scale, to pass with no pixel size."""
    write_ome_zarr(tmp_path / "a.ome.zarr", pixels(), ANISOTROPIC)
    edit_multiscale(tmp_path / "a.ome.zarr", change)
    with pytest.raises(ValueError, match=f"a.ome.zarr: malformed OME-Zarr multiscales metadata .*{detail}"):
        image_io.read_image(tmp_path / "a.ome.zarr")


def write_positioned_ome_tiff(path, image, size: PixelSize, position, unit="µm", axes="YX"):
    """An OME-TIFF of ``size`` whose planes lie at ``position`` (z, y, x, in ``unit``; None: not given), the
    planes of a stack one z step apart, as a microscope's stage writes them."""
    symbol = {"micrometer": "µm", "nanometer": "nm"}[size.unit]
    planes = image.shape[0] if axes == "ZYX" else 1
    metadata = {"axes": axes, "PhysicalSizeX": size.x, "PhysicalSizeY": size.y, "PhysicalSizeXUnit": symbol,
                "PhysicalSizeYUnit": symbol, "Plane": {}}
    if size.z is not None:
        metadata.update(PhysicalSizeZ=size.z, PhysicalSizeZUnit=symbol)
    step = 0.0 if size.z is None else in_unit(size.z, size.unit, {"µm": "micrometer", "nm": "nanometer"}[unit])
    for axis, value in zip("ZYX", position):
        if value is not None:
            values = [value + k * step for k in range(planes)] if axis == "Z" else [value] * planes
            metadata["Plane"].update({f"Position{axis}": values, f"Position{axis}Unit": [unit] * planes})
    tifffile.imwrite(path, image, metadata=metadata)


def test_an_ome_tiff_plane_position_is_its_translation(tmp_path):
    """OME-TIFFs say where they lie in their planes' PositionX/Y/Z; it was dropped, and results were laid at 0, 0."""
    write_positioned_ome_tiff(tmp_path / "um.ome.tif", pixels(), ANISOTROPIC, (None, 3.0, 7.5))
    assert read_pixel_size(tmp_path / "um.ome.tif") == replace(ANISOTROPIC, translation=(0.0, 3.0, 7.5))
    # positions in nm on pixels in µm, and in µm on pixels in nm, come in the pixel size's unit
    write_positioned_ome_tiff(tmp_path / "nm.ome.tif", pixels(), ANISOTROPIC, (250.0, -1500.0, 2500.0), unit="nm")
    assert read_pixel_size(tmp_path / "nm.ome.tif").translation == pytest.approx((0.25, -1.5, 2.5))
    em = PixelSize(40.0, 40.0, "nanometer", z=250.0)
    write_positioned_ome_tiff(tmp_path / "em.ome.tif", pixels((3, 30, 40)), em, (10.0, 1.5, 2.0), axes="ZYX")
    read = read_pixel_size(tmp_path / "em.ome.tif")
    assert (read.y, read.x, read.z) == (40.0, 40.0, 250.0)
    assert read.translation == pytest.approx((10000.0, 1500.0, 2000.0))      # the first plane's: z 10 µm, not 10.5
    # no position, or all of it 0, is no translation, as an OME-Zarr's
    write_positioned_ome_tiff(tmp_path / "zero.ome.tif", pixels(), ANISOTROPIC, (0.0, 0.0, 0.0))
    assert read_pixel_size(tmp_path / "zero.ome.tif") == ANISOTROPIC


def test_the_position_of_the_first_plane_counts_whatever_the_order_of_the_planes(tmp_path):
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="40" SizeY="30" '
           'SizeC="1" SizeZ="2" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5" PhysicalSizeZ="2">'
           '<Plane TheZ="1" PositionX="1" PositionXUnit="&#181;m" PositionZ="7" PositionZUnit="&#181;m"/>'
           '<Plane TheZ="0" PositionX="1" PositionXUnit="&#181;m" PositionZ="5" PositionZUnit="&#181;m"/>'
           '<TiffData IFD="0" PlaneCount="2"/></Pixels></Image></OME>')
    tifffile.imwrite(tmp_path / "a.ome.tif", pixels((2, 30, 40)), description=xml, metadata=None)
    assert read_pixel_size(tmp_path / "a.ome.tif") == PixelSize(0.5, 0.5, z=2.0, translation=(5.0, 0.0, 1.0))


def test_a_stack_positioned_on_later_planes_only_begins_where_its_first_plane_lies(tmp_path):
    """Positions given on some planes only (plane 0 bare, or not listed): the first positioned plane's were taken as
    the stack's, and a stack whose PositionZ came from plane 2 began two z steps too deep (its results too)."""
    def ome(planes):
        return ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
                '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="40" SizeY="30" '
                'SizeC="1" SizeZ="3" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5" PhysicalSizeZ="2">'
                f'<TiffData IFD="0" PlaneCount="3"/>{planes}</Pixels></Image></OME>')

    def at(z, the_z):
        return (f'<Plane TheZ="{the_z}" PositionX="1" PositionXUnit="&#181;m" PositionZ="{z}" '
                f'PositionZUnit="&#181;m"/>')

    for planes in ('<Plane TheZ="0"/>' + at(11, 2) + at(9, 1), at(11, 2)):
        tifffile.imwrite(tmp_path / "a.ome.tif", pixels((3, 30, 40)), description=ome(planes), metadata=None)
        assert read_pixel_size(tmp_path / "a.ome.tif") == PixelSize(0.5, 0.5, z=2.0, translation=(7.0, 0.0, 1.0))


@pytest.mark.parametrize("value, unit", [("abc", "µm"), ("inf", "µm"), ("nan", "µm"), ("-inf", "nm"), (7.5, "pc"),
                                         (7.5, "reference frame"), (7.5, None), (1e306, "m")])
def test_a_plane_position_that_is_no_length_is_no_translation(tmp_path, value, unit, model_file):
    """No number, not finite, in a unit unet_fast does not know (OME's default, "reference frame", of no known
    length), or beyond floats in the pixel size's unit: the image has no translation, and is segmented."""
    plane = {"PositionX": [value] * 2, "PositionY": [3.0] * 2, "PositionYUnit": ["µm"] * 2}
    if unit is not None:
        plane["PositionXUnit"] = [unit] * 2
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.ome.tif", pixels((2, 30, 40)), metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeYUnit": "nm", "Plane": plane})
    assert read_pixel_size(tmp_path / "in" / "a.ome.tif") == PixelSize(0.5, 0.25, "nanometer")
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "--no-progress"]) == 0
    assert read_pixel_size(tmp_path / "out" / "a.tif") == PixelSize(0.5, 0.25, "nanometer")


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    model = unet_fast.UNet(1, 2, depth=2, base_channels=4)
    return unet_fast.save_model(model, tmp_path / "model.safetensors", pixel_size={"y": 0.5, "x": 0.3})


@needs_zarr      # segment reads TIFF inputs lazily, through zarr
@pytest.mark.parametrize("output_format", ["tif", "ome.zarr"])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_segment_keeps_the_pixel_size_in_every_output(tmp_path, model_file, kind, output_format, capsys):
    write, name = WRITERS[kind]
    (tmp_path / "in").mkdir()
    image = pixels((2, 70, 90))                     # a stack: the z step survives too
    # an OME-Zarr's translation (where it lies) stays in the result, so a viewer lays one on the other
    size = PixelSize(0.5, 0.25, "micrometer", z=None, translation=(0.0, 3.0, 7.5)) if kind == "ome-zarr" else \
        PixelSize(0.5, 0.25, "micrometer", z=2.0)
    write(tmp_path / "in" / name, image, size, **({} if kind == "ome-zarr" else {"axes": "ZYX"}))
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "--format", output_format, "--no-progress"]) == 0
    [output] = list((tmp_path / "out").iterdir())
    assert output.name == f"in.{output_format}"
    assert read_pixel_size(output) == size        # an OME-TIFF keeps the translation as plane positions too
    labels, info = image_io.read_image(output, lazy=False)
    np.testing.assert_array_equal(labels, predict_tiled(unet_fast.load_model(model_file), image, progress=False))
    assert "WARNING" not in capsys.readouterr().err     # 0.5 x 0.25 against 0.5 x 0.3: within a factor 1.5


@needs_zarr      # segment reads TIFF inputs lazily, through zarr
@pytest.mark.parametrize("scale", [None, "2"])
@pytest.mark.parametrize("output_format", ["tif", "ome.zarr"])
def test_segment_keeps_an_ome_tiff_position_in_every_output(tmp_path, model_file, output_format, scale):
    """An OME-TIFF's plane positions come out in either format, a stack's planes one z step apart; resampled
    (--scale) results are on the image's own grid, so where their first pixel lies does not change."""
    (tmp_path / "in").mkdir()
    size = PixelSize(0.5, 0.25, "micrometer", z=2.0)
    write_positioned_ome_tiff(tmp_path / "in" / "in.ome.tif", pixels((3, 70, 90)), size, (-4.0, 3.0, 7.5),
                              axes="ZYX")
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "--format", output_format, "--no-progress"] + (["--scale", scale] if scale else [])) == 0
    output = tmp_path / "out" / f"in.{output_format}"
    assert read_pixel_size(output) == replace(size, translation=(-4.0, 3.0, 7.5))
    if output_format == "tif":
        with tifffile.TiffFile(output) as tif:
            planes = [element.attrib for element in ElementTree.fromstring(tif.ome_metadata).iter()
                      if element.tag.endswith("}Plane")]
        assert [(p["TheZ"], float(p["PositionZ"]), float(p["PositionY"]), float(p["PositionX"])) for p in planes] == [
            ("0", -4.0, 3.0, 7.5), ("1", -2.0, 3.0, 7.5), ("2", 0.0, 3.0, 7.5)]
        assert {p[f"Position{axis}Unit"] for p in planes for axis in "XYZ"} == {"µm"}
    else:
        [dataset] = __import__("zarr").open_group(str(output), mode="r").attrs["multiscales"][0]["datasets"]
        assert dataset["coordinateTransformations"] == [{"type": "scale", "scale": [2.0, 0.5, 0.25]},
                                                        {"type": "translation", "translation": [-4.0, 3.0, 7.5]}]
    labels, _ = image_io.read_image(output, lazy=False)
    assert labels.shape == (3, 70, 90)


@needs_zarr
def test_probabilities_as_ome_zarr_open_in_napari_with_their_pixel_size(tmp_path, model_file):
    image = pixels()
    out = predict_tiled(unet_fast.load_model(model_file), image, output="probabilities", progress=False,
                        out=tmp_path / "p.ome.zarr", pixel_size=ANISOTROPIC)
    [(data, kwargs, kind)] = read_ome_zarr(out)
    assert kind == "image" and kwargs["channel_axis"] == 0
    assert kwargs["scale"] == [[0.5, 0.25]] * 2 and kwargs["units"] == [["micrometer"] * 2] * 2


@needs_zarr
def test_segment_warns_at_a_very_different_scale(tmp_path, model_file, capsys):
    (tmp_path / "in").mkdir()
    write_ome_tiff(tmp_path / "in" / "fine.ome.tif", pixels(), PixelSize(0.2, 0.2))
    assert cli.main(["segment", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model_file),
                     "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "pixels of 0.2 x 0.2 micrometer, 2.5 times smaller than the model's training " \
                                "images (0.5 x 0.3 micrometer)" in err


def test_scale_warning_compares_in_one_unit():
    class Model:
        metadata = {"pixel_size": {"y": 0.5, "x": 0.5, "unit": "micrometer"}}

    assert scale_warning(Model(), PixelSize(500.0, 500.0, "nanometer"), "a.tif") is None
    assert "2.0 times larger" in scale_warning(Model(), PixelSize(1000.0, 1000.0, "nanometer"), "a.tif")
    assert scale_warning(Model(), None, "a.tif") is None


def test_common_pixel_size_names_disagreement(tmp_path):
    for i, size in enumerate((0.5, 0.5, 1.2)):
        write_ome_tiff(tmp_path / f"{i}.ome.tif", pixels(), PixelSize(size, size))
    typical, problem = common_pixel_size(sorted(tmp_path.iterdir()))
    assert typical == PixelSize(0.5, 0.5) and "range from 0.5 x 0.5 to 1.2 x 1.2" in problem
    tifffile.imwrite(tmp_path / "3.tif", pixels())
    assert "1 of 4 training images declare no pixel size" in common_pixel_size(sorted(tmp_path.iterdir()))[1]


def test_train_records_the_training_pixel_size(tmp_path):
    images, labels = unet_fast.synthetic_nuclei(2, 48, seed=0)
    for folder in ("im", "lb"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        write_imagej_tiff(tmp_path / "im" / f"n{i}.tif", (images[i] * 255).astype(np.uint8), PixelSize(0.65, 0.65))
        tifffile.imwrite(tmp_path / "lb" / f"n{i}.tif", labels[i].astype(np.uint16))
    assert cli.main(["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lb"), "--depth", "2",
                     "--base-channels", "4", "--tile-size", "44", "--tiles-per-epoch", "1", "--epochs", "1",
                     "--no-progress", "-o", str(tmp_path / "model.safetensors")]) == 0
    model = unet_fast.load_model(tmp_path / "model.safetensors")
    assert model.metadata["pixel_size"] == {"y": 0.65, "x": 0.65, "unit": "micrometer"}
