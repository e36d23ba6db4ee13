"""bioimage.io model packages: writing one from a unet_fast model, and reading one back.

A package (model description format 0.5, https://bioimage.io) is a zip of rdf.yaml and the files it
names: the weights as a PyTorch state_dict with its architecture (standalone_unet.py), as TorchScript
and as ONNX; a test input and the output it must give; a cover image; documentation. The tools that
run it (bioimageio.core, deepImageJ in Fiji, ilastik, QuPath, napari plugins) learn the model's
conventions from rdf.yaml alone, so they are spelled out there:

- sizes: legal inputs are min + step * k pixels per axis (a parameterized size). A valid-padding net
  crops its own context, so each output axis is the input axis plus a negative offset, -2 * context:
  the spec's way of saying that the halo is already cropped by the model;
- normalisation: unet_fast.Normalization as preprocessing ops (percentile -> scale_range,
  fixed and dtype -> scale_linear, clip -> clip);
- output: class probabilities (softmax of the logits), one channel per class;
- pixel size: the training data's, as the space axes' unit and scale, where the model records one
  (metadata "pixel_size", see unet_fast.pixel_size); of a model that resamples its images (``input_scale``,
  exported with ignore_scale), the pixel size the network sees, which images must be resampled to.

The unet_fast settings go under config.unet_fast too, so ``read_package`` (behind
``unet_fast.load_model``) restores them exactly; without them it derives them from the ops above.
"""
from __future__ import annotations

import datetime
import io
import keyword
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch

from . import geometry, standalone_unet
from .architecture import MAX_DEPTH, MAX_PARAMETERS, check_config, parameter_count, parameter_shapes
from .checks import BadArgument
from .export import (ONNX_OPSET, STANDALONE_ARGUMENTS, check_onnx_size, check_output, export_onnx,
                     export_torchscript, new_file, require, standalone_model)
from .model_file import class_names_of, default_class_names
from .normalization import Normalization
from .pixel_size import PixelSize

INPUT_ID, OUTPUT_ID = "raw", "probabilities"
TEST_OUTPUT_SIZE = 128          # the test tensors' output edge, where the test image is large enough
RONNEBERGER_2015 = {"text": "Ronneberger, O., Fischer, P., Brox, T. U-Net: Convolutional Networks for Biomedical "
                            "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
                    "doi": "10.1007/978-3-319-24574-4_28"}
CLASS_COLOURS = np.array([[0, 0, 0], [255, 191, 0], [0, 160, 255], [230, 60, 60], [90, 200, 90],
                          [200, 90, 220]], np.uint8)


# ----------------------------------------------------------------------------- writing

def export_bioimageio(model: torch.nn.Module, output, *, test_image=None, name: str | None = None,
                      description: str | None = None, authors: list[str] | None = None,
                      license: str = "CC-BY-4.0", tags: list[str] | None = None) -> Path:
    """Write ``model`` as a bioimage.io package (``output``: a new .zip); returns the path.

    test_image: a raw image, (H, W) or (C, H, W) in the model's channels, from the kind of data the model
      is for: its centre, at a legal size, becomes the package's test input, and the model's output on
      it the test output; None: a synthetic nuclei image (single-channel models only).
    name, description: default to ones built from the output's name and the model (a name is 5 to 128 letters,
      digits, spaces and _+-(), the spec's rule); authors: names (default: "unet_fast user", say who you are);
      license: an SPDX identifier for the weights.
    The package is checked with the bioimage.io validator (bioimageio.spec) before it is written; the caller's
    name, description, authors, license and tags before any work (a BadArgument naming the one refused). It holds ONNX
    weights, so a model of more than 2 GiB of weights cannot be one: refused before anything is done or written
    (``export.check_onnx_size``), not after its TorchScript weights.
    """
    output = check_output(output, "bioimageio")
    check_onnx_size(model, "a bioimage.io package holds the weights as ONNX too, so it cannot hold this model; "
                           "export it as torchscript instead (unet-fast export --format torchscript), which has no "
                           "such limit, and share that file")
    normalization = getattr(model, "normalization", None) or Normalization()
    raw = _test_crop(model, normalization, test_image)      # the caller's input first: before any other work
    if normalization.nonfinite == "zero":
        warnings.warn(NONFINITE_ZERO_CAVEAT + "; the package's README says so", stacklevel=2)
    spec = require("bioimageio.spec", "writing a bioimage.io package")
    class_names = class_names_of(model)
    name = name or default_name(output)
    rdf = _description(spec, model, name, description, authors or ["unet_fast user"], license, tags or [],
                       normalization, class_names, raw)
    _check_caller_fields(spec, rdf)         # before the work: the validator would refuse the package after it
    probabilities = _probabilities(model, normalization, raw)
    with tempfile.TemporaryDirectory(prefix="unet_fast-bioimageio-") as folder:
        folder = Path(folder)
        np.save(folder / "test_input.npy", raw[None])
        np.save(folder / "test_output.npy", probabilities[None])
        tifffile.imwrite(folder / "sample_input.tif", raw[None])      # for people and image viewers
        tifffile.imwrite(folder / "sample_output.tif", probabilities[None])
        torch.save(standalone_model(model).state_dict(), folder / "weights.pt")
        shutil.copyfile(standalone_unet.__file__, folder / "standalone_unet.py")
        export_torchscript(model, folder / "weights_torchscript.pt")
        export_onnx(model, folder / "weights.onnx")
        _cover(model, normalization, raw, probabilities).save(folder / "cover.png")
        (folder / "README.md").write_text(_documentation(model, name, normalization, class_names, raw, probabilities))
        with spec.ValidationContext(root=folder, perform_io_checks=True):
            descr = spec.build_description(rdf)
        summary = descr.validation_summary
        if summary.status == "failed":
            raise ValueError(f"the bioimage.io validator rejected the package: {_errors(summary)}")
        with new_file(output) as temporary:
            spec.save_bioimageio_package(descr, output_path=temporary)
    return output


#: the characters, and the lengths, of a model's name the bioimage.io spec (model 0.5) allows
NAME_CHARACTERS, NAME_LENGTHS = "letters, digits, spaces and _+-()", (5, 128)


def default_name(output) -> str:
    """"unet_fast U-Net " and the output's stem, its characters the spec refuses (nuclei.v2.zip's ".") made "_"."""
    stem = re.sub(r"[^A-Za-z0-9_+\- ()]", "_", Path(output).stem)
    return f"unet_fast U-Net {stem}"[:64].rstrip()        # the spec advises 64 characters at most


#: the rdf's fields that export_bioimageio's caller gives, each by the argument of its name
CALLER_FIELDS = ("name", "description", "authors", "license", "tags")


def _check_caller_fields(spec, rdf: dict) -> None:
    """A BadArgument naming the argument whose value the bioimage.io validator refuses, before any work: the checks
    of these fields need no file (io checks off), and the package's validation, which refused them after the
    seconds of work the package takes, said only that it was refused (a table of many lines)."""
    with spec.ValidationContext(perform_io_checks=False):
        summary = spec.build_description(rdf).validation_summary
    for error in summary.errors:
        field = str(error.loc[0]) if error.loc else ""
        if field not in CALLER_FIELDS:
            continue           # the files it names, not written yet: checked with the package
        if field == "name":
            detail = (f"a model's name must be {NAME_LENGTHS[0]} to {NAME_LENGTHS[1]} characters, {NAME_CHARACTERS} "
                      f"(bioimage.io's rule), got {rdf['name']!r:.140}")
        elif field == "license":
            detail = (f"a license must be an SPDX identifier bioimage.io knows, e.g. CC-BY-4.0, MIT, BSD-3-Clause, "
                      f"Apache-2.0; got {rdf['license']!r:.80}")
        else:
            detail = f"bioimage.io refuses it: {_errors(summary, field)}"
        raise BadArgument(field, detail)


def _errors(summary, field: str | None = None) -> str:
    """The validator's errors (of ``field``, or all) in one line: where, and what, each (not its table)."""
    lines = []
    for error in summary.errors:
        if field is not None and (not error.loc or str(error.loc[0]) != field):
            continue
        # pydantic's locations also name the validators tried ("function-after[HttpUrl(), str]"): the fields only
        where = ".".join(str(part) for part in error.loc if isinstance(part, int) or re.fullmatch(r"\w+", str(part)))
        lines.append(f"{where or 'rdf'}: {error.msg:.200}")
    return "; ".join(dict.fromkeys(lines))


def _test_crop(model, normalization: Normalization, test_image) -> np.ndarray:
    """The test input: the centre of ``test_image`` as (C, n, n), n legal and about TEST_OUTPUT_SIZE out; an image
    that cannot be one is test_image's fault (BadArgument: a usage error of `unet-fast export --test-image`)."""
    config = model.config()
    depth, padding, channels = config["depth"], config["padding"], config["in_channels"]
    wanted = geometry.input_size_for(TEST_OUTPUT_SIZE, depth, padding)
    if test_image is None:
        if channels != 1:
            raise BadArgument("test_image", f"test_image is needed: the model takes {channels} channels and the "
                                            f"built-in synthetic image has one; pass an image (C, H, W) of the "
                                            f"model's kind of data")
        from .synthetic import synthetic_nuclei

        test_image = synthetic_nuclei(n=1, size=wanted, seed=0)[0][0]
    image = np.asarray(test_image)
    image = image[None] if image.ndim == 2 else image
    if image.ndim != 3 or image.shape[0] != channels:
        raise BadArgument("test_image", f"test_image must be (H, W) or (C, H, W) with C = {channels} (the model's "
                                        f"in_channels), got shape {np.asarray(test_image).shape}")
    size = geometry.nearest_valid_input_sizes(min(wanted, *image.shape[1:]), depth, padding)[0]
    if size is None:
        raise BadArgument("test_image", f"test_image of shape {image.shape} is too small: the model needs at "
                                        f"least {geometry.min_input_size(depth, padding)} pixels a side")
    top, left = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
    crop = image[:, top:top + size, left:left + size]
    # integer pixels stay integers where the rule depends on the type ("dtype" divides by its maximum)
    keep_type = normalization.mode == "dtype" and crop.dtype.kind in "ui"
    crop = np.ascontiguousarray(crop if keep_type else crop.astype(np.float32))
    if normalization.mode == "percentile":
        # scale_range divides by the percentiles' spread (plus 1e-6) where Normalization, finding them equal, takes
        # the range of the pixels: the package's own test would fail in every tool that runs it
        sample = crop.reshape(crop.shape[0] if normalization.per_channel else 1, -1).astype(np.float64)
        low, high = np.percentile(sample, [normalization.low, normalization.high], axis=1)
        if not np.allclose(normalization.statistics(crop, channel_axis=0)[1], high - low, rtol=1e-6, atol=0):
            raise BadArgument("test_image", f"the centre of test_image ({size} x {size} px) has (nearly) equal "
                                            f"{normalization.low} and {normalization.high} percentiles, which the "
                                            f"bioimage.io tools scale unlike unet_fast; pass an image with more "
                                            f"of its kind of content in the centre")
    return crop


def _probabilities(model, normalization: Normalization, raw: np.ndarray) -> np.ndarray:
    """What the package's pipeline gives for ``raw``: normalise, the standalone net, softmax."""
    x = torch.from_numpy(normalization(raw, channel_axis=0))[None]
    with torch.no_grad():
        return torch.softmax(standalone_model(model)(x), dim=1)[0].numpy()


def _network_pixel_size(model) -> PixelSize | None:
    """The pixel size of the images the network takes: the training images' (metadata "pixel_size"), resampled by
    the model's ``input_scale`` (by 0.5: pixels twice as large); None where the model records none."""
    recorded = (getattr(model, "metadata", None) or {}).get("pixel_size")
    if recorded is None:
        return None
    trained, scale = PixelSize.from_dict(recorded), _input_scale(model)
    return PixelSize(trained.y / scale, trained.x / scale, trained.unit)


def _input_scale(model) -> float:
    return float(getattr(model, "input_scale", 1.0))


def _space_axes(size, pixel_size: PixelSize | None) -> list[dict]:
    axes = []
    for axis in ("y", "x"):
        physical = {} if pixel_size is None else {"unit": pixel_size.unit, "scale": getattr(pixel_size, axis)}
        axes.append({"type": "space", "id": axis, "size": size, **physical})
    return axes


def _preprocessing(normalization: Normalization, dtype: np.dtype) -> list[dict]:
    steps = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    if normalization.mode == "percentile":
        axes = ["y", "x"] if normalization.per_channel else ["channel", "y", "x"]
        steps.append({"id": "scale_range", "kwargs": {"axes": axes, "min_percentile": float(normalization.low),
                                                      "max_percentile": float(normalization.high), "eps": 1e-6}})
    elif normalization.mode in ("fixed", "dtype"):
        offset, scale = normalization.statistics(np.zeros((1, 1), dtype))
        if (offset[0], scale[0]) != (0.0, 1.0):
            steps.append({"id": "scale_linear", "kwargs": {"gain": float(1 / scale[0]),
                                                           "offset": float(-offset[0] / scale[0])}})
    if normalization.clip and normalization.mode != "none":
        steps.append({"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}})
    # said, not left to the spec: it ends preprocessing without ensure_dtype with a cast back to the input's
    # type, which turns integer pixels scaled to [0, 1] into zeros and ones (or hands the net uint16)
    return steps + [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}] if len(steps) > 1 else steps


def _identifiers(names: list[str]) -> list[str]:
    """Class names as the spec's channel names (identifiers), or class0... where that fails."""
    cleaned = [re.sub(r"\W", "_", name) for name in names]
    cleaned = [f"c_{name}" if not re.match(r"[A-Za-z_]", name) else name for name in cleaned]
    if len(set(cleaned)) < len(cleaned) or any(keyword.iskeyword(name) for name in cleaned):
        return default_class_names(len(names))
    return cleaned


def _description(spec, model, name, description, authors, license, tags, normalization, class_names, raw) -> dict:
    config = model.config()
    depth, padding = config["depth"], config["padding"]
    context = geometry.context(depth, padding)
    pixel_size = _network_pixel_size(model)
    size = {"min": geometry.min_input_size(depth, padding), "step": geometry.size_step(depth)}
    output_axes = [{"tensor_id": INPUT_ID, "axis_id": axis, "offset": -2 * context} for axis in ("y", "x")]
    torch_version = torch.__version__.split("+")[0]
    architecture = {name: config[name] for name in STANDALONE_ARGUMENTS}
    from . import __version__

    return {
        "format_version": spec.model.v0_5.ModelDescr.implemented_format_version,
        "type": "model",
        "name": name,
        "description": description or (f"U-Net (Ronneberger et al. 2015) for {len(class_names)}-class segmentation "
                                       f"({', '.join(class_names)}), depth {depth}, {padding} padding, trained with unet_fast"),
        "authors": [{"name": author} for author in authors],
        "cite": [RONNEBERGER_2015],
        "license": license,
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "tags": sorted({"unet_fast", "u-net", "segmentation", "2d", "pytorch", "onnx", "torchscript", *tags}),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "inputs": [{
            "id": INPUT_ID,
            "description": f"raw image; {_normalization_text(normalization)}",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": [f"channel{i}" for i in range(config["in_channels"])]},
                     *_space_axes(size, pixel_size)],
            "data": {"type": str(raw.dtype)},
            "test_tensor": {"source": "test_input.npy"},
            "sample_tensor": {"source": "sample_input.tif"},
            "preprocessing": _preprocessing(normalization, raw.dtype),
        }],
        "outputs": [{
            "id": OUTPUT_ID,
            "description": f"class probabilities; the output lies {context} px inside the input on every side",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": _identifiers(class_names)},
                     *[{**axis, "size": reference} for axis, reference in zip(_space_axes(None, pixel_size), output_axes)]],
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "test_tensor": {"source": "test_output.npy"},
            "sample_tensor": {"source": "sample_output.tif"},
            "postprocessing": [{"id": "softmax", "kwargs": {"axis": "channel"}}],
        }],
        "weights": {
            "pytorch_state_dict": {"source": "weights.pt", "pytorch_version": torch_version,
                                   "architecture": {"source": "standalone_unet.py", "callable": "UNet",
                                                    "kwargs": architecture}},
            "torchscript": {"source": "weights_torchscript.pt", "pytorch_version": torch_version,
                            "parent": "pytorch_state_dict"},
            "onnx": {"source": "weights.onnx", "opset_version": ONNX_OPSET, "parent": "pytorch_state_dict"},
        },
        "config": {"unet_fast": {"architecture": {**architecture, "dropout": config.get("dropout", 0.0)},
                                 "normalization": normalization.to_dict(), "class_names": class_names,
                                 "metadata": getattr(model, "metadata", {}), "input_scale": _input_scale(model),
                                 "unet_fast_version": __version__}},
    }


#: what a package of a model that sets NaN/inf pixels to 0 cannot tell other tools
NONFINITE_ZERO_CAVEAT = ("the model's normalisation sets NaN and infinite pixels to 0 (nonfinite='zero'), which "
                         "bioimage.io preprocessing cannot express: other tools than unet_fast hand them to the "
                         "network as they are")


def _normalization_text(normalization: Normalization) -> str:
    n = normalization
    text = {"percentile": f"scaled so that its {n.low} and {n.high} percentiles become 0 and 1"
                          f"{' (per channel)' if n.per_channel else ''}",
            "fixed": f"scaled so that {n.low} and {n.high} become 0 and 1",
            "dtype": "integers divided by their type's maximum",
            "none": "used as it is"}[n.mode]
    return text + (", then clipped to [0, 1]" if n.clip and n.mode != "none" else "")


def _documentation(model, name, normalization, class_names, raw, probabilities) -> str:
    config = model.config()
    depth, padding = config["depth"], config["padding"]
    smallest, step = geometry.min_input_size(depth, padding), geometry.size_step(depth)
    context = geometry.context(depth, padding)
    metadata = getattr(model, "metadata", None) or {}
    trained = f" for {metadata['epochs']} epochs" if "epochs" in metadata else ""
    pixel, factor = _network_pixel_size(model), _input_scale(model)
    scale = (f"Its training images, as the network saw them, had pixels of {pixel.y:.6g} x {pixel.x:.6g} {pixel.unit} "
             f"(y x); segment images of about that pixel size." if pixel
             else "The training data's pixel size was not recorded.")
    if factor != 1.0:       # exported with ignore_scale: unet_fast resampled its images, the package cannot
        scale += (f" unet_fast resampled every image by {factor:.6g} before this network (its training brought "
                  f"the objects to the size it learns them at), which no bioimage.io tool does: resample your "
                  f"images by {factor:.6g} first" + (", to the pixel size above." if pixel else "."))
    parameters = sum(p.numel() for p in model.parameters())
    nonfinite = ("\n\nNaN and infinite pixels: unet_fast sets them to 0 (this model's normalisation says so), "
                 "which bioimage.io preprocessing cannot express; other tools hand them to the network as they "
                 "are, so set them to 0 first." if normalization.nonfinite == "zero" else "")
    return f"""# {name}

A U-Net (Ronneberger, Fischer and Brox, MICCAI 2015) trained with [unet_fast]{trained}: depth {depth}
(base width {config['base_channels']}), {padding} padding, {parameters:,} parameters, {config['in_channels']}
input channel(s), classes {', '.join(class_names)}.

## Input

A raw image (batch, channel, y, x), {_normalization_text(normalization)} (the preprocessing in rdf.yaml).
Legal sizes per axis are {smallest} + {step} k pixels (k = 0, 1, ...). {scale}{nonfinite}

## Output

Class probabilities (softmax of the network's logits), one channel per class. The network uses
unpadded convolutions: each output pixel sees {context} pixels of context on every side, so the output
is {2 * context} pixels smaller than the input along y and x (rdf.yaml: output size = input size
{-2 * context:+d}). To segment a whole image of H x W pixels in one pass, mirror it (reflection without
repeating the edge pixel: numpy's `np.pad(image, ..., mode="reflect")`) in one step by {context} pixels at the
top and left, and at the bottom and right by {context} pixels plus what brings each axis to a legal size: the
first H x W output pixels are the image's (the last rows and columns see a few of the pixels past {context}, so
mirror those too, not pad them otherwise). Or use `unet-fast segment -m THIS.zip`, which tiles an image of any
size and gives the same result as that one pass.

## Validation

The test input ({'x'.join(map(str, raw.shape))}, {raw.dtype}) and the output it must give
({'x'.join(map(str, probabilities.shape))}) were made by unet_fast's own pipeline; every weights format
(PyTorch state_dict, TorchScript, ONNX) reproduces that output (`bioimageio test THIS.zip`).

## Citation

Ronneberger, O., Fischer, P., Brox, T. U-Net: Convolutional Networks for Biomedical Image Segmentation.
MICCAI 2015. doi:10.1007/978-3-319-24574-4_28
"""


def _cover(model, normalization, raw, probabilities):
    """Input (centre, as the output sees it) beside the predicted classes: a 2:1 PNG."""
    from PIL import Image

    height, width = probabilities.shape[-2:]
    top, left = (raw.shape[1] - height) // 2, (raw.shape[2] - width) // 2
    image = normalization(raw, channel_axis=0)[0, top:top + height, left:left + width]
    low, high = np.percentile(image, (1, 99.8))
    grey = (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)
    classes = CLASS_COLOURS[probabilities.argmax(0) % len(CLASS_COLOURS)]
    pair = np.concatenate([np.repeat(grey[..., None], 3, axis=2), classes], axis=1)
    zoom = max(1, 256 // height)
    return Image.fromarray(pair).resize((pair.shape[1] * zoom, pair.shape[0] * zoom), Image.NEAREST)


# ----------------------------------------------------------------------------- reading

def is_package(path) -> bool:
    """True for what ``read_package`` reads: a .zip, or an rdf.yaml / bioimageio.yaml."""
    name = Path(path).name.lower()
    return name.endswith(".zip") or name in ("rdf.yaml", "bioimageio.yaml") or name.endswith(".bioimageio.yaml")


def read_package(path) -> tuple[dict, dict]:
    """(config, state_dict) of a bioimage.io package of a U-Net unet_fast can represent.

    config has the keys of a unet_fast model file's: architecture, normalization, class_names, metadata,
    input_scale (1 for a package without one).
    The weights come from the package's pytorch_state_dict entry; their names must be those of
    unet_fast.reference.UNet (as in every package unet_fast exports).
    """
    spec = require("bioimageio.spec", "reading a bioimage.io package")
    from .model_file import ModelFileError, _architecture_from_state, _unwrap_state_dict, load_weights_only

    try:     # no I/O checks: they would fetch every file the rdf names, URLs and paths outside the package too
        descr = spec.load_model_description(str(path), format_version="latest", perform_io_checks=False)
    except ValueError as error:
        raise ValueError(f"{path}: not a valid bioimage.io model package: {error}") from None
    weights = descr.weights.pytorch_state_dict
    if weights is None:
        raise ValueError(f"{path}: the package has no pytorch_state_dict weights (it has "
                         f"{', '.join(descr.weights.available_formats)}); unet_fast reads only those")
    source = weights.source
    if not isinstance(source, spec.common.RelativeFilePath) or ".." in source.path.parts:
        raise ModelFileError(f"{path}: its weights {str(source)!r} are not a file inside the package; unet_fast "
                             f"reads no file from elsewhere (another folder, a URL)")
    saved = (descr.config.model_extra or {}).get("unet_fast") if descr.config is not None else None
    declared = saved.get("architecture") if isinstance(saved, dict) else None
    limit = _weights_limit(declared if isinstance(declared, dict) else dict(weights.architecture.kwargs or {}))
    data = weights.get_reader().read(limit + 1)       # checks the sha256 where the rdf gives one
    if len(data) > limit:
        raise ModelFileError(f"{path}: its weights ({source}) hold more than {limit:,} bytes, more than the U-Net "
                             f"it declares (or the largest one unet_fast builds) can take; refused unread")
    state = _unwrap_state_dict(load_weights_only(io.BytesIO(data), f"{path} ({source})"), path)
    try:
        architecture = _architecture_from_state(state)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; unet_fast reads packages of its own U-Net "
                         f"(architecture {weights.architecture.callable})") from None
    if saved:
        try:
            return ({"architecture": {"class": "UNet", **saved["architecture"], "backend": "auto"},
                     "normalization": saved["normalization"], "class_names": saved["class_names"],
                     "metadata": saved.get("metadata", {}), "input_scale": saved.get("input_scale", 1.0)}, state)
        except (KeyError, TypeError, AttributeError) as error:
            raise ModelFileError(f"{path}: its config.unet_fast is no unet_fast model config "
                                 f"({'no ' if isinstance(error, KeyError) else ''}{error})") from None
    offset = getattr(next(a.size for a in descr.outputs[0].axes if a.type == "space"), "offset", 0)
    architecture.update(padding="valid" if offset < 0 else "same", backend="auto")
    channel_names = [str(n) for a in descr.outputs[0].axes if a.type == "channel" for n in a.channel_names]
    return ({"architecture": architecture,
             "normalization": _normalization_from_ops(descr.inputs[0].preprocessing, path).to_dict(),
             "class_names": channel_names or None, "metadata": {}}, state)


def _weights_limit(architecture: dict) -> int:
    """The most bytes a state_dict file of the U-Net ``architecture`` (constructor arguments) takes: float64
    weights plus torch.save's framing; for an architecture unet_fast would not build, the largest one it does."""
    defaults = dict(in_channels=1, num_classes=2, depth=5, base_channels=64)    # UNet's
    arguments = {**defaults, **{name: architecture[name] for name in defaults if name in architecture}}
    try:
        check_config(**arguments)
        shapes, values = parameter_shapes(**arguments), parameter_count(**arguments)
    except (TypeError, ValueError):
        shapes, values = parameter_shapes(1, 2, MAX_DEPTH, 1), MAX_PARAMETERS
    return 8 * values + 4096 * len(shapes) + (1 << 20)


def _normalization_from_ops(steps, path) -> Normalization:
    """The Normalization a package's preprocessing describes (ops unet_fast cannot express: an error)."""
    rule, clip = Normalization(mode="none"), False
    for step in steps:
        kwargs = step.kwargs
        if step.id == "ensure_dtype":
            continue
        if step.id == "scale_range" and rule.mode == "none":
            per_channel = kwargs.axes is not None and "channel" not in [str(a) for a in kwargs.axes]
            rule = Normalization("percentile", low=kwargs.min_percentile, high=kwargs.max_percentile,
                                 per_channel=per_channel)
        elif step.id == "scale_linear" and rule.mode == "none" and not hasattr(kwargs, "axis"):
            low = -kwargs.offset / kwargs.gain
            rule = Normalization("fixed", low=low, high=low + 1 / kwargs.gain)
        elif step.id == "clip" and (kwargs.min, kwargs.max) == (0.0, 1.0) and rule.mode != "none":
            clip = True
        else:
            raise ValueError(f"{path}: preprocessing step {step.id!r} cannot be expressed as a "
                             f"unet_fast.Normalization (percentile, fixed, clip)")
    return Normalization(**{**rule.to_dict(), "clip": clip})
