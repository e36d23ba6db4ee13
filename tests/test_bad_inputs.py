"""What a hostile or careless user hands in: every case is refused (or reported) with an error of the
right type naming the argument at fault, within seconds, and no input file changes (issue 9).

API cases: (id, call, error type, text the message must hold). CLI cases: (id, argv, exit status,
text stderr must hold); usage errors (status 2) print exactly one line and write nothing at all.
Everything is tiny (a depth-2 net with 2 channels, images of a few thousand pixels), so the whole
file runs in seconds.
"""
import hashlib
import json
import os
import pickle
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import save_file

import unet_fast
from unet_fast import cli, geometry, image_io, reference, segment
from unet_fast.checks import BadArgument
from unet_fast.inference import predict_tiled
from unet_fast.model_file import METADATA_KEY, ModelFileError, read_model_config
from unet_fast.normalization import NonFiniteInputError, Normalization
from unet_fast.ops import weighted_softmax_cross_entropy
from unet_fast.train import fit

ROOT = Path(__file__).resolve().parents[1]


# ---- the user's files

HUGE_VIEW = np.broadcast_to(np.zeros((1, 1), np.float32), (100010, 100010))   # 40 GB to see, 4 bytes held


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return unet_fast.UNet(depth=2, base_channels=2, **kw)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The user's files, shared by every case (each case checks that none of them changed)."""
    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    image_io.write_image(root / "in" / "a.tif", rng.integers(0, 255, (40, 50)).astype(np.uint8))
    image_io.write_image(root / "in" / "b.png", rng.integers(0, 255, (30, 30)).astype(np.uint8))
    nan = rng.random((40, 40)).astype(np.float32)
    nan[5, 7] = np.nan
    tifffile.imwrite(root / "nan.tif", nan)
    inf = rng.random((40, 40)).astype(np.float32)
    inf[9, 9] = np.inf
    tifffile.imwrite(root / "inf.tif", inf)
    tifffile.imwrite(root / "tiled.tif", rng.integers(0, 255, (64, 64)).astype(np.uint8), tile=(16, 16))
    whole = (root / "in" / "a.tif").read_bytes()
    (root / "truncated.tif").write_bytes(whole[:len(whole) // 2])
    images, labels = unet_fast.synthetic_nuclei(2, 64, seed=0)
    for folder, data in (("train_images", images), ("train_labels", labels)):
        (root / folder).mkdir()
        for i, array in enumerate(data):
            tifffile.imwrite(root / folder / f"x{i}.tif", array)
    (root / "other_labels").mkdir()
    tifffile.imwrite(root / "other_labels" / "y0.tif", labels[0])
    (root / "one_image").mkdir()
    tifffile.imwrite(root / "one_image" / "y0.tif", images[0])
    (root / "dup_images").mkdir()                 # x0.tif and x0.png: which one does x0's label label?
    for i, array in enumerate(images):
        tifffile.imwrite(root / "dup_images" / f"x{i}.tif", array)
    image_io.write_image(root / "dup_images" / "x0.png", images[0].astype(np.uint8))
    tifffile.imwrite(root / "complex.tif", (rng.random((40, 40)) + 1j * rng.random((40, 40))).astype(np.complex64))
    (root / "complex_images").mkdir()
    for i, array in enumerate(images):
        tifffile.imwrite(root / "complex_images" / f"x{i}.tif", array.astype(np.complex64))
    (root / "nan_images").mkdir()
    for i, array in enumerate(images):
        tifffile.imwrite(root / "nan_images" / f"x{i}.tif", np.where(np.arange(array.size).reshape(array.shape) == 7,
                                                                     np.nan, array).astype(np.float32))
    unet_fast.save_model(tiny_model(), root / "model.safetensors",
                         normalization=Normalization(mode="dtype"))
    (root / "a_file").write_text("not a folder")
    # validation sets: a good one, one with a label of the wrong shape, one holding a training image
    val_images, val_labels = unet_fast.synthetic_nuclei(1, 64, seed=1)
    for folder, data in (("val_images", val_images[0]), ("val_labels", val_labels[0]), ("bad_val_images", val_images[0]),
                         ("bad_val_labels", val_labels[0][:60]), ("copy_images", images[1]),
                         ("copy_labels", labels[1])):
        (root / folder).mkdir()
        tifffile.imwrite(root / folder / "v0.tif", data)
    (root / "later_bad_labels").mkdir()          # the second training label is of the wrong shape
    tifffile.imwrite(root / "later_bad_labels" / "x0.tif", labels[0])
    tifffile.imwrite(root / "later_bad_labels" / "x1.tif", labels[1][:, :50])
    # a finished run of 2 epochs (adam, seed 0, depth 2, base 2), for the --resume cases
    assert cli.main(["train", "--images", str(root / "train_images"), "--labels", str(root / "train_labels"),
                     "-o", str(root / "run.safetensors"), "--epochs", "2", "--depth", "2", "--base-channels", "2",
                     "--tiles-per-epoch", "1", "--batch-size", "1", "--tile-size", "44", "--no-progress"]) == 0
    return root


def snapshot(root: Path) -> dict:
    """Every file under root: content hash, size, mode and modification time."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            state[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_size,
                                                  stat.st_mode, stat.st_mtime_ns)
    return state


# ---- model files as a hostile user writes them

def model_file(path: Path, config=lambda c: None, state=lambda s: None) -> Path:
    """A .safetensors model file from a valid one, its JSON config and tensors edited in place."""
    model = tiny_model()
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    good = path.parent / "good.safetensors"
    unet_fast.save_model(model, good)
    metadata = read_model_config(good)
    config(metadata)
    state(tensors)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata)})
    good.unlink()
    return path


def pt_file(path: Path, state=lambda s: None) -> Path:
    tensors = dict(tiny_model().state_dict())
    state(tensors)
    torch.save(tensors, path)
    return path


def set_architecture(**values):
    return lambda c: c["architecture"].update(values)


def x(shape=(1, 1, 28, 28), dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


def lazy(path):
    """The TIFF as segment reads it: lazily (through zarr, or a memory map where zarr is missing)."""
    return image_io.read_image(path)[0]


def ome_zarr(path):
    """An OME-Zarr image folder (written as segment writes its outputs)."""
    pytest.importorskip("zarr")
    from unet_fast.sinks import StreamingZarrWriter

    writer = StreamingZarrWriter(path, (30, 30), np.uint8)
    writer.write(0, 0, 0, np.arange(900, dtype=np.uint8).reshape(30, 30))
    writer.close()
    return path


class Hostile:
    def __reduce__(self):
        return (os.system, ("true",))


# ---- API cases: (id, call(ws, tmp), error type, text the message holds)

API = [
    # the architecture, before anything is allocated
    ("depth 40", lambda ws, t: unet_fast.UNet(depth=40, base_channels=1), ValueError, "depth"),
    ("widest layer", lambda ws, t: unet_fast.UNet(depth=12, base_channels=64), ValueError, "base_channels"),
    ("too many parameters", lambda ws, t: unet_fast.UNet(depth=8, base_channels=128), ValueError, "parameters"),
    ("huge base", lambda ws, t: unet_fast.UNet(base_channels=10 ** 6), ValueError, "base_channels"),
    ("huge in_channels", lambda ws, t: unet_fast.UNet(in_channels=10 ** 6), ValueError, "in_channels"),
    ("num_classes 1", lambda ws, t: unet_fast.UNet(num_classes=1), ValueError, "num_classes"),
    ("num_classes 0", lambda ws, t: unet_fast.UNet(num_classes=0), ValueError, "num_classes"),
    ("depth bool", lambda ws, t: unet_fast.UNet(depth=True), ValueError, "depth"),
    ("padding", lambda ws, t: unet_fast.UNet(padding="full"), ValueError, "padding"),
    ("dropout nan", lambda ws, t: unet_fast.UNet(dropout=float("nan")), ValueError, "dropout"),
    ("dropout 1", lambda ws, t: unet_fast.UNet(dropout=1.0), ValueError, "dropout"),
    ("reference depth 40", lambda ws, t: reference.UNet(depth=40), ValueError, "depth"),
    # forward inputs
    ("float64 input", lambda ws, t: tiny_model()(x(dtype=torch.float64)), TypeError, "torch.float64"),
    ("float16 input", lambda ws, t: tiny_model()(x(dtype=torch.float16)), TypeError, "torch.float16"),
    ("integer input", lambda ws, t: tiny_model()(x(dtype=torch.int64)), TypeError, "floating-point"),
    ("3-D input", lambda ws, t: tiny_model()(x((1, 28, 28))), ValueError, "4 dimensions"),
    ("illegal size", lambda ws, t: tiny_model()(x((1, 1, 27, 28))), ValueError, "nearest legal"),
    ("wrong channels", lambda ws, t: tiny_model()(x((1, 3, 28, 28))), ValueError, "in_channels"),
    # geometry, in closed form
    ("geometry depth 64", lambda ws, t: geometry.min_input_size(64), ValueError, "depth"),
    ("input_size_for 0", lambda ws, t: geometry.input_size_for(0), ValueError, "output"),
    ("output_size illegal", lambda ws, t: geometry.output_size(13, 2), ValueError, "legal"),
    # the loss
    ("loss target out of range", lambda ws, t: weighted_softmax_cross_entropy(
        torch.zeros(1, 2, 3, 3), torch.full((1, 3, 3), 2), None), IndexError, "target"),
    ("loss negative weight", lambda ws, t: weighted_softmax_cross_entropy(
        torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), -torch.ones(1, 3, 3)), ValueError, "weight"),
    ("loss NaN weight", lambda ws, t: weighted_softmax_cross_entropy(
        torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), torch.full((1, 3, 3), float("nan"))),
     ValueError, "weight"),
    ("loss infinite weight", lambda ws, t: weighted_softmax_cross_entropy(
        torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), torch.full((1, 3, 3), float("inf"))),
     ValueError, "not NaN or infinite"),
    ("loss target shape", lambda ws, t: weighted_softmax_cross_entropy(
        torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, dtype=torch.long)), ValueError, "target"),
    ("loss float target", lambda ws, t: weighted_softmax_cross_entropy(
        torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3)), TypeError, "target"),
    ("loss reduction", lambda ws, t: weighted_softmax_cross_entropy(
        torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long), reduction="avg"), ValueError, "reduction"),
    # model files: untrusted input
    ("model missing", lambda ws, t: unet_fast.load_model(t / "none.safetensors"), FileNotFoundError,
     "none.safetensors"),
    ("model is a folder", lambda ws, t: unet_fast.load_model(ws / "in"), ModelFileError, "folder"),
    ("model suffix", lambda ws, t: unet_fast.load_model(ws / "in" / "a.tif"), ModelFileError, "a.tif"),
    ("model garbage", lambda ws, t: unet_fast.load_model(
        (t / "g.safetensors").write_bytes(os.urandom(300)) and t / "g.safetensors"), ModelFileError,
     "g.safetensors"),
    ("model truncated", lambda ws, t: unet_fast.load_model(
        (t / "t.safetensors").write_bytes((ws / "model.safetensors").read_bytes()[:-100]) and t / "t.safetensors"),
     ModelFileError, "t.safetensors"),
    ("model without metadata", lambda ws, t: unet_fast.load_model(
        save_file({"w": torch.zeros(2)}, str(t / "p.safetensors")) or t / "p.safetensors"), ModelFileError,
     "not a unet_fast model file"),
    ("model metadata not JSON", lambda ws, t: unet_fast.load_model(
        save_file({"w": torch.zeros(2)}, str(t / "j.safetensors"), metadata={METADATA_KEY: "{depth: 5"})
        or t / "j.safetensors"), ModelFileError, "JSON"),
    # JSON nested deeper than Python's recursion limit: it was a RecursionError naming no file
    ("model metadata nests deeply", lambda ws, t: unet_fast.load_model(
        save_file({"w": torch.zeros(2)}, str(t / "r.safetensors"), metadata={METADATA_KEY: "[" * 100_000})
        or t / "r.safetensors"), ModelFileError, "r.safetensors: its 'unet_fast' metadata nests too deeply"),
    ("model claims depth 40", lambda ws, t: unet_fast.load_model(
        model_file(t / "d40.safetensors", set_architecture(depth=40, base_channels=1))), ModelFileError, "depth"),
    ("model claims num_classes 1", lambda ws, t: unet_fast.load_model(
        model_file(t / "k1.safetensors", set_architecture(num_classes=1))), ModelFileError, "num_classes"),
    ("model depth is text", lambda ws, t: unet_fast.load_model(
        model_file(t / "ds.safetensors", set_architecture(depth="2"))), ModelFileError, "depth"),
    ("model claims wider layers", lambda ws, t: unet_fast.load_model(
        model_file(t / "w.safetensors", set_architecture(base_channels=4))), ModelFileError, "shape"),
    ("model tensor missing", lambda ws, t: unet_fast.load_model(
        model_file(t / "m.safetensors", state=lambda s: s.pop("head.bias"))), ModelFileError, "missing"),
    ("model tensor extra", lambda ws, t: unet_fast.load_model(
        model_file(t / "e.safetensors", state=lambda s: s.update(extra=torch.zeros(3)))), ModelFileError,
     "unexpected"),
    ("model NaN weights", lambda ws, t: unet_fast.load_model(
        model_file(t / "n.safetensors", state=lambda s: s["head.weight"].fill_(float("nan")))), ModelFileError,
     "NaN"),
    # finite as float64, infinite in the float32 model it loads into: it used to load, with an infinite weight
    ("model float64 weights beyond float32", lambda ws, t: unet_fast.load_model(
        model_file(t / "f64.safetensors", state=lambda s: s.update(
            {k: v.double().fill_(1e300) if k == "head.bias" else v.double() for k, v in s.items()}))),
     ModelFileError, "f64.safetensors: tensor head.bias holds 2 NaN or infinite value(s) of 2 (once float32"),
    ("model integer weights", lambda ws, t: unet_fast.load_model(
        model_file(t / "i.safetensors", state=lambda s: s.update({"head.bias": torch.zeros(2, dtype=torch.int32)}))),
     ModelFileError, "floating point"),
    ("model normalisation", lambda ws, t: unet_fast.load_model(
        model_file(t / "z.safetensors", lambda c: c["normalization"].update(mode="magic"))), ModelFileError,
     "normalization"),
    ("model normalisation sample 0", lambda ws, t: unet_fast.load_model(
        model_file(t / "s.safetensors", lambda c: c["normalization"].update(sample_pixels=0))),
     ModelFileError, "sample_pixels"),
    ("model normalisation range beyond float32", lambda ws, t: unet_fast.load_model(
        model_file(t / "r.safetensors", lambda c: c["normalization"].update(mode="fixed", low=-1e308, high=1e308))),
     ModelFileError, "r.safetensors: normalization: Normalization high - low"),
    ("model class names", lambda ws, t: unet_fast.load_model(
        model_file(t / "c.safetensors", lambda c: c.update(class_names=["only one"]))), ModelFileError,
     "class_names"),
    # a training pixel size that is none used to fail every image segment read (and export) later, unnamed
    ("model pixel size 0", lambda ws, t: unet_fast.load_model(
        model_file(t / "p0.safetensors", lambda c: c["metadata"].update(pixel_size={"y": 0, "x": 0.5}))),
     ModelFileError, "pixel size y must be a positive number"),
    ("model pixel size text", lambda ws, t: unet_fast.load_model(
        model_file(t / "pt.safetensors", lambda c: c["metadata"].update(pixel_size="0.5 um"))),
     ModelFileError, "pt.safetensors: metadata pixel_size '0.5 um': must be an object"),
    ("model unknown field", lambda ws, t: unet_fast.load_model(
        model_file(t / "u.safetensors", set_architecture(kernel=5))), ModelFileError, "kernel"),
    ("model format version", lambda ws, t: unet_fast.load_model(
        model_file(t / "v.safetensors", lambda c: c.update(format_version=99))), ModelFileError, "version"),
    ("pt truncated", lambda ws, t: unet_fast.load_model(
        (t / "x.pt").write_bytes(b"PK\x03\x04 truncated") and t / "x.pt"), ModelFileError, "x.pt"),
    ("pt pickle with code", lambda ws, t: unet_fast.load_model(
        (t / "evil.pt").write_bytes(pickle.dumps(Hostile())) and t / "evil.pt"), pickle.UnpicklingError, "evil.pt"),
    ("pt without head", lambda ws, t: unet_fast.load_model(
        pt_file(t / "h.pt", lambda s: s.pop("head.weight"))), ModelFileError, "head.weight"),
    ("pt NaN weights", lambda ws, t: unet_fast.load_model(
        pt_file(t / "n.pt", lambda s: s["encoder.0.conv1.bias"].fill_(float("inf")))), ModelFileError, "NaN"),
    ("pt float8 weights", lambda ws, t: unet_fast.load_model(
        pt_file(t / "f8.pt", lambda s: s.update({k: v.to(torch.float8_e4m3fn) for k, v in s.items()}))),
     ModelFileError, "f8.pt: tensor encoder.0.conv1.weight is torch.float8_e4m3fn"),
    ("pt sparse weights", lambda ws, t: unet_fast.load_model(
        pt_file(t / "sp.pt", lambda s: s.update({k: v.to_sparse() for k, v in s.items()}))),
     ModelFileError, "sp.pt: tensor encoder.0.conv1.weight is sparse"),
    ("save to .pt", lambda ws, t: unet_fast.save_model(tiny_model(), t / "m.pt"), ValueError, ".safetensors"),
    ("save NaN weights", lambda ws, t: unet_fast.save_model(
        tiny_model().requires_grad_(False).apply(lambda m: getattr(m, "bias", None) is not None
                                                 and m.bias.fill_(float("nan"))), t / "n.safetensors"),
     ValueError, "NaN"),
    # predict_tiled
    ("out is the input", lambda ws, t: predict_tiled(tiny_model(), lazy(ws / "tiled.tif"), out=ws / "tiled.tif"),
     BadArgument, "out"),
    ("out is a symlink to the input", lambda ws, t: predict_tiled(
        tiny_model(), lazy(ws / "tiled.tif"), out=(t / "l.tif").symlink_to(ws / "tiled.tif") or t / "l.tif"),
     BadArgument, "tiled.tif"),
    ("out is a hard link to the input", lambda ws, t: predict_tiled(
        tiny_model(), lazy(ws / "tiled.tif"), out=(t / "h.tif").hardlink_to(ws / "tiled.tif") or t / "h.tif"),
     BadArgument, "tiled.tif"),
    # (a huge image, a view of one pixel: a given tile larger than the image is cut to it)
    ("tile beyond memory", lambda ws, t: predict_tiled(tiny_model(), HUGE_VIEW, tile_size=100002), BadArgument,
     "tile_size"),
    ("tile beyond the budget", lambda ws, t: predict_tiled(tiny_model(), np.zeros((30, 30), np.float32), tile_size=402,
                                                           memory_budget_bytes=2 ** 20), BadArgument, "budget"),
    ("batch beyond memory", lambda ws, t: predict_tiled(tiny_model(), HUGE_VIEW, tile_size=4002,
                                                        batch_size=10 ** 5), BadArgument, "batch_size"),
    ("memory budget -5", lambda ws, t: predict_tiled(tiny_model(), np.zeros((30, 30), np.float32),
                                                     memory_budget_bytes=-5), BadArgument, "memory_budget_bytes"),
    ("memory budget float", lambda ws, t: predict_tiled(tiny_model(), np.zeros((30, 30), np.float32),
                                                        memory_budget_bytes=1.5e9), BadArgument, "memory_budget_bytes"),
    ("NaN pixel", lambda ws, t: predict_tiled(tiny_model(), tifffile.imread(ws / "nan.tif")), NonFiniteInputError,
     "nonfinite"),
    # an (H, W, 1) grey or (H, W, 3) RGB array as imageio and PIL give them: a stack of 1 px wide planes, or 40
    # channels, before
    ("channels last, one channel", lambda ws, t: predict_tiled(tiny_model(), np.zeros((40, 30, 1), np.float32)),
     ValueError, "looks channels-last (H, W, C)"),
    ("channels last, RGB", lambda ws, t: predict_tiled(tiny_model(in_channels=3), np.zeros((40, 30, 3), np.float32)),
     ValueError, "np.moveaxis(image, -1, 0)"),
    ("complex pixels", lambda ws, t: predict_tiled(tiny_model(), tifffile.imread(ws / "complex.tif")), ValueError,
     "pixels of type complex64; unet_fast segments real numbers"),
    ("pixels that are objects", lambda ws, t: predict_tiled(tiny_model(), np.full((30, 30), None)), ValueError,
     "pixels of type object"),
    ("inf pixel, percentiles", lambda ws, t: predict_tiled(tiny_model(), tifffile.imread(ws / "inf.tif"),
                                                           normalization=Normalization()), NonFiniteInputError,
     "nonfinite"),
    ("output kind", lambda ws, t: predict_tiled(tiny_model(), np.zeros((30, 30)), output="mask"), ValueError,
     "output"),
    ("compute dtype", lambda ws, t: predict_tiled(tiny_model(), np.zeros((30, 30)), dtype="int8"), ValueError,
     "dtype"),
    ("tile size", lambda ws, t: predict_tiled(tiny_model(), np.zeros((30, 30)), tile_size=13, out=t / "o.tif"),
     ValueError, "tile_size"),
    ("layout", lambda ws, t: predict_tiled(tiny_model(), np.zeros((30, 30)), layout="XY"), ValueError, "layout"),
    ("image channels", lambda ws, t: predict_tiled(tiny_model(), np.zeros((3, 30, 30)), layout="CYX"), ValueError,
     "channel"),
    ("percentiles reversed", lambda ws, t: Normalization(low=50, high=10), ValueError, "low"),
    ("nonfinite policy", lambda ws, t: Normalization(nonfinite="ignore"), ValueError, "nonfinite"),
    ("normalisation low NaN", lambda ws, t: Normalization(mode="fixed", low=float("nan")), ValueError, "low"),
    ("normalisation range below float32's", lambda ws, t: Normalization(mode="fixed", low=0.0, high=1e-45),
     ValueError, "high - low"),
    # segment.run
    ("segment into the inputs' folder", lambda ws, t: segment.run([ws / "in"], ws / "in", ws / "model.safetensors"),
     BadArgument, "output_dir"),
    ("segment into a symlink to it", lambda ws, t: segment.run(
        [ws / "in"], (t / "link").symlink_to(ws / "in") or t / "link", ws / "model.safetensors"), BadArgument,
     "a.tif"),
    ("segment onto a hard link", lambda ws, t: segment.run(
        [ws / "in" / "a.tif"], (t / "o").mkdir() or (t / "o" / "a.tif").hardlink_to(ws / "in" / "a.tif") or t / "o",
        ws / "model.safetensors"), BadArgument, "same file"),
    ("segment an OME-Zarr into its own folder", lambda ws, t: segment.run(
        [ome_zarr(t / "in" / "x.ome.zarr")], t / "in", ws / "model.safetensors", format="ome.zarr"), BadArgument,
     "x.ome.zarr"),
    ("segment format", lambda ws, t: segment.run([ws / "in"], t / "o", ws / "model.safetensors", format="png"),
     BadArgument, "format"),
    ("segment num_parts 0", lambda ws, t: segment.run([ws / "in"], t / "o", ws / "model.safetensors", num_parts=0),
     BadArgument, "num_parts"),
    ("segment part_id", lambda ws, t: segment.run([ws / "in"], t / "o", ws / "model.safetensors", num_parts=2,
                                                  part_id=2), BadArgument, "part_id"),
    ("segment device gpu", lambda ws, t: segment.run([ws / "in"], t / "o", ws / "model.safetensors", device="gpu"),
     BadArgument, "gpu"),
    ("segment output_dir is a file", lambda ws, t: segment.run([ws / "in"], ws / "a_file", ws / "model.safetensors"),
     BadArgument, "a_file"),
    ("segment max_pixels 0", lambda ws, t: segment.run([ws / "in"], t / "o", ws / "model.safetensors", max_pixels=0),
     BadArgument, "max_pixels"),
    ("segment nonfinite", lambda ws, t: segment.run([ws / "in"], t / "o", ws / "model.safetensors",
                                                    nonfinite="drop"), BadArgument, "nonfinite"),
    ("segment tile size", lambda ws, t: segment.run([ws / "in"], t / "o", ws / "model.safetensors", tile_size=13),
     BadArgument, "tile_size"),
    # fit
    ("fit epochs 0", lambda ws, t: fit(tiny_model(), None, epochs=0), ValueError, "epochs"),
    ("fit lr negative", lambda ws, t: fit(tiny_model(), None, epochs=1, lr=-1.0), ValueError, "lr"),
    ("fit momentum 1", lambda ws, t: fit(tiny_model(), None, epochs=1, momentum=1.0), ValueError, "momentum"),
]
if torch.cuda.is_available():
    API = [case for case in API if "float16 input" not in case[0]]
else:
    API.append(("segment on cuda without CUDA", lambda ws, t: segment.run(
        [ws / "in"], t / "o", ws / "model.safetensors", device="cuda"), BadArgument, "CUDA is not available"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("call, error, named", [pytest.param(*case[1:], id=case[0]) for case in API])
def test_api_refuses(ws, tmp_path, call, error, named):
    before = snapshot(ws)
    started = time.perf_counter()
    with pytest.raises(error) as raised:
        call(ws, tmp_path)
    assert named in str(raised.value)
    assert time.perf_counter() - started < 10
    assert snapshot(ws) == before
    assert not any(".partial" in p.name for p in tmp_path.rglob("*"))     # no temporary left behind


def test_an_8_kb_model_file_claiming_depth_16_is_refused_before_allocating(tmp_path):
    """Within the depth limit, but 2^30+ parameters: refused from its header, in far less than the
    seconds (and gigabytes) building it would take."""
    path = model_file(tmp_path / "claims.safetensors", set_architecture(depth=16, base_channels=64))
    assert path.stat().st_size < 8192
    started = time.perf_counter()
    with pytest.raises(ModelFileError, match="claims.safetensors.*limit"):
        unet_fast.load_model(path)
    assert time.perf_counter() - started < 1.0


# ---- CLI cases: (id, argv(ws, tmp), exit status, text stderr holds)

def _segment(ws, t, *more, model=None, out=None):
    return ["segment", "-i", str(ws / "in"), "-o", str(out or t / "out"), "-m", str(model or ws / "model.safetensors"),
            "--no-progress", *more]


def _train(ws, t, *more, output=None):
    return ["train", "--images", str(ws / "train_images"), "--labels", str(ws / "train_labels"), "-o",
            str(output or t / "m.safetensors"), "--epochs", "1", "--depth", "2", "--base-channels", "2",
            "--no-progress", *more]


def _validated(ws, t, images="val_images", labels="val_labels", *more):
    return _train(ws, t, "--val-images", str(ws / images), "--val-labels", str(ws / labels), *more)


def _resume(ws, t, *more):
    """Resume the fixture's run (2 epochs) into a fresh work dir, with the flags ``more``."""
    return ["train", "--images", str(ws / "train_images"), "--labels", str(ws / "train_labels"), "-o",
            str(t / "m.safetensors"), "--work-dir", str(t / "w"), "--resume", str(ws / "run" / "last.safetensors"),
            "--no-progress", *more]


def _overlay_in_the_way(path: Path, link: bool = False) -> bool:
    """The user's own PNG at an overlay's path (or, with ``link``, a symlink there to the user's PNG beside it)."""
    path.parent.mkdir(parents=True)
    mine = path.parent.parent / "mine.png" if link else path
    image_io.write_image(mine, np.full((8, 8), 7, np.uint8))
    if link:
        path.symlink_to(mine)
    return True


CLI = [
    # usage errors: exit 2, one line naming the flag, nothing written
    ("segment -o the input folder", lambda ws, t: ["segment", "-i", str(ws / "in"), "-o", str(ws / "in"), "-m",
                                                   str(ws / "model.safetensors")], 2, "-o/--output-dir"),
    ("segment -o a file", lambda ws, t: ["segment", "-i", str(ws / "in"), "-o", str(ws / "a_file"), "-m",
                                         str(ws / "model.safetensors")], 2, "is a file"),
    ("segment -o a file's name", lambda ws, t: ["segment", "-i", str(ws / "in"), "-o", str(t / "out.tif"), "-m",
                                                str(ws / "model.safetensors")], 2, "name a folder, e.g. "),
    ("measure -o a file's name", lambda ws, t: ["measure", "-i", str(ws / "in"), "-o", str(t / "objects.CSV")], 2,
     "-o/--output-dir: "),
    ("segment -m missing", lambda ws, t: _segment(ws, t, model=t / "nope.safetensors"), 2, "-m/--model"),
    ("segment -m a folder", lambda ws, t: _segment(ws, t, model=ws / "in"), 2, "-m/--model"),
    ("segment -m an image", lambda ws, t: _segment(ws, t, model=ws / "in" / "a.tif"), 2, "a.tif"),
    ("segment -m garbage", lambda ws, t: _segment(
        ws, t, model=(t / "g.safetensors").write_bytes(b"\x00" * 64) and t / "g.safetensors"), 2, "g.safetensors"),
    ("segment -m claims depth 40", lambda ws, t: _segment(
        ws, t, model=model_file(t / "d.safetensors", set_architecture(depth=40))), 2, "depth"),
    ("segment -m NaN weights", lambda ws, t: _segment(ws, t, model=model_file(
        t / "n.safetensors", state=lambda s: s["head.bias"].fill_(float("nan")))), 2, "NaN"),
    ("segment --device cuda" if not torch.cuda.is_available() else "segment --device cuda:99",
     lambda ws, t: _segment(ws, t, "--device", "cuda" if not torch.cuda.is_available() else "cuda:99"), 2,
     "--device"),
    ("segment --device gpu", lambda ws, t: _segment(ws, t, "--device", "gpu"), 2, "--device"),
    ("segment --tile-size 13", lambda ws, t: _segment(ws, t, "--tile-size", "13"), 2, "--tile-size"),
    ("segment --tile-size abc", lambda ws, t: _segment(ws, t, "--tile-size", "abc"), 2, "--tile-size"),
    ("segment --max-pixels 0", lambda ws, t: _segment(ws, t, "--max-pixels", "0"), 2, "--max-pixels"),
    ("segment --num-parts alone", lambda ws, t: _segment(ws, t, "--num-parts", "2"), 2, "--part-id"),
    ("segment --part-id too large", lambda ws, t: _segment(ws, t, "--num-parts", "2", "--part-id", "2"), 2,
     "part_id"),
    ("segment --format png", lambda ws, t: _segment(ws, t, "--format", "png"), 2, "--format"),
    ("segment without -m", lambda ws, t: ["segment", "-i", str(ws / "in"), "-o", str(t / "out")], 2, "-m/--model"),
    ("train -o model.pt", lambda ws, t: _train(ws, t, output=t / "model.pt"), 2, "-o/--output"),
    ("train -o in a file's folder", lambda ws, t: _train(ws, t, output=ws / "a_file" / "m.safetensors"), 2,
     "-o/--output"),
    ("train -o a folder", lambda ws, t: _train(ws, t, output=ws / "in"), 2, "-o/--output"),
    ("train --work-dir a file", lambda ws, t: _train(ws, t, "--work-dir", str(ws / "a_file")), 2, "--work-dir"),
    ("train --labels the images folder", lambda ws, t: _train(ws, t, "--labels", str(ws / "train_images")), 2,
     "--labels"),
    ("segment -m /dev/null", lambda ws, t: _segment(ws, t, model="/dev/null"), 2, "not a regular file"),
    ("train --labels missing", lambda ws, t: _train(ws, t, "--labels", str(t / "none")), 2, "--labels"),
    ("train labels of other names", lambda ws, t: _train(ws, t, "--labels", str(ws / "other_labels")), 2,
     "--images and --labels"),
    ("train --resume corrupt", lambda ws, t: _train(ws, t, "--resume", str(ws / "truncated.tif")), 2, "--resume"),
    ("train --resume a model file", lambda ws, t: _train(ws, t, "--resume", str(ws / "model.safetensors")), 2,
     "--resume"),
    ("train --depth 40", lambda ws, t: _train(ws, t, "--depth", "40"), 2, "--depth"),
    ("train --depth 10 too wide", lambda ws, t: _train(ws, t, "--depth", "10", "--base-channels", "64"), 2,
     "--base-channels"),
    ("train --num-classes 1", lambda ws, t: _train(ws, t, "--num-classes", "1"), 2, "--num-classes"),
    ("train --lr nan", lambda ws, t: _train(ws, t, "--lr", "nan"), 2, "--lr"),
    ("train --momentum 1.5", lambda ws, t: _train(ws, t, "--momentum", "1.5"), 2, "--momentum"),
    ("train --dropout -0.1", lambda ws, t: _train(ws, t, "--dropout", "-0.1"), 2, "--dropout"),
    ("train --sigma 0", lambda ws, t: _train(ws, t, "--sigma", "0"), 2, "--sigma"),
    ("train --tile-size 13", lambda ws, t: _train(ws, t, "--tile-size", "13"), 2, "--tile-size"),
    ("train --val-fraction with 1 image", lambda ws, t: _train(ws, t, "--images", str(ws / "one_image"), "--labels",
                                                                str(ws / "other_labels"), "--val-fraction", "0.5"),
     2, "--val-fraction"),
    ("train --device cuda:99", lambda ws, t: _train(ws, t, "--device", "cuda:99"), 2, "--device"),
    ("train --workers -1", lambda ws, t: _train(ws, t, "--workers", "-1"), 2, "--workers"),
    ("train --seed 2^70", lambda ws, t: _train(ws, t, "--seed", str(2 ** 70)), 2, "--seed"),
    ("train --work-dir the -o path", lambda ws, t: _train(ws, t, "--work-dir", str(t / "m.safetensors")), 2,
     "argument --work-dir: "),
    ("train --work-dir inside the -o path", lambda ws, t: _train(ws, t, "--work-dir", str(t / "m.safetensors" / "w")),
     2, "argument --work-dir: "),
    ("train --work-dir the images folder", lambda ws, t: _train(ws, t, "--work-dir", str(ws / "train_images")), 2,
     "--work-dir"),
    ("train -o the checkpoint", lambda ws, t: _train(ws, t, "--work-dir", str(t / "w"),
                                                     output=t / "w" / "last.safetensors"), 2, "checkpoint"),
    ("train on two images of one base name", lambda ws, t: _train(ws, t, "--images", str(ws / "dup_images")), 2,
     "--images and --labels: "),
    ("train: the ambiguous files named", lambda ws, t: _train(ws, t, "--images", str(ws / "dup_images")), 2,
     "x0.png' and '"),
    ("evaluate --tile-size 7", lambda ws, t: ["evaluate", "-m", str(ws / "model.safetensors"), "--images",
                                              str(ws / "train_images"), "--labels", str(ws / "train_labels"), "-o",
                                              str(t / "out"), "--tile-size", "7"], 2, "--tile-size"),
    ("evaluate --labels the images folder", lambda ws, t: ["evaluate", "-m", str(ws / "model.safetensors"),
                                                           "--images", str(ws / "train_images"), "--labels",
                                                           str(ws / "train_images"), "-o", str(t / "out")], 2,
     "--labels"),
    ("evaluate -o holding the user's evaluation.csv", lambda ws, t: (t / "ev").mkdir() or (
        t / "ev" / "evaluation.csv").write_text("my notes\n") and [
        "evaluate", "-m", str(ws / "model.safetensors"), "--images", str(ws / "train_images"), "--labels",
        str(ws / "train_labels"), "-o", str(t / "ev")], 2, "argument -o/--output-dir: "),
    ("segment --overlay onto the user's PNG", lambda ws, t: _overlay_in_the_way(t / "so" / "overlays" / "b.png") and
     _segment(ws, t, "--overlay", out=t / "so"), 2, "argument -o/--output-dir: the overlay"),
    ("segment --overlay onto a folder", lambda ws, t: (t / "so" / "overlays" / "b.png").mkdir(parents=True) or
     _segment(ws, t, "--overlay", out=t / "so"), 2, "a folder"),
    ("segment --overlay onto a symlink to the user's file", lambda ws, t: _overlay_in_the_way(
        t / "so" / "overlays" / "b.png", link=True) and _segment(ws, t, "--overlay", out=t / "so"), 2, "a symlink"),
    ("evaluate --overlay onto the user's PNG", lambda ws, t: _overlay_in_the_way(t / "ev" / "overlays" / "x1.png") and [
        "evaluate", "-m", str(ws / "model.safetensors"), "--images", str(ws / "train_images"), "--labels",
        str(ws / "train_labels"), "-o", str(t / "ev"), "--overlay"], 2, "argument -o/--output-dir: the overlay"),
    ("evaluate --overlay onto a folder", lambda ws, t: (t / "ev" / "overlays" / "x1.png").mkdir(parents=True) or [
        "evaluate", "-m", str(ws / "model.safetensors"), "--images", str(ws / "train_images"), "--labels",
        str(ws / "train_labels"), "-o", str(t / "ev"), "--overlay"], 2, "a folder"),
    ("evaluate --overlay onto a symlink to the user's file", lambda ws, t: _overlay_in_the_way(
        t / "ev" / "overlays" / "x1.png", link=True) and [
        "evaluate", "-m", str(ws / "model.safetensors"), "--images", str(ws / "train_images"), "--labels",
        str(ws / "train_labels"), "-o", str(t / "ev"), "--overlay"], 2, "a symlink"),
    ("evaluate two images of one base name", lambda ws, t: ["evaluate", "-m", str(ws / "model.safetensors"),
                                                            "--images", str(ws / "dup_images"), "--labels",
                                                            str(ws / "train_labels"), "-o", str(t / "out")], 2,
     "--images: "),
    ("train on NaN images", lambda ws, t: _train(ws, t, "--images", str(ws / "nan_images")), 2, "'x0'"),
    ("train on complex images", lambda ws, t: _train(ws, t, "--images", str(ws / "complex_images")), 2,
     "image 'x0' has pixels of type complex64"),
    ("evaluate complex images", lambda ws, t: ["evaluate", "-m", str(ws / "model.safetensors"), "--images",
                                               str(ws / "complex_images"), "--labels", str(ws / "train_labels"), "-o",
                                               str(t / "out")], 2, "argument --images: image 'x0' has pixels of type"),
    ("train a later label of the wrong shape", lambda ws, t: _train(ws, t, "--labels", str(ws / "later_bad_labels")),
     2, "argument --images and --labels: image 'x1'"),
    ("train a validation label of the wrong shape", lambda ws, t: _validated(ws, t, "bad_val_images", "bad_val_labels"),
     2, "argument --val-images and --val-labels: image 'v0'"),
    ("train --val-labels the --val-images folder", lambda ws, t: _validated(ws, t, "val_images", "val_images"), 2,
     "argument --val-labels: "),
    ("train --val-images the --images folder", lambda ws, t: _validated(ws, t, "train_images", "train_labels"), 2,
     "argument --val-images: "),
    ("train validation images that are training images", lambda ws, t: _validated(ws, t, "copy_images", "copy_labels"),
     2, "argument --val-images: 1 validation image(s) are training images too: v0 (= x1)"),
    ("train --work-dir the --val-images folder", lambda ws, t: _validated(ws, t, "val_images", "val_labels",
                                                                         "--work-dir", str(ws / "val_images")), 2,
     "argument --work-dir: "),
    ("train --work-dir the --val-labels folder", lambda ws, t: _validated(ws, t, "val_images", "val_labels",
                                                                         "--work-dir", str(ws / "val_labels")), 2,
     "argument --work-dir: "),
    ("train --best-metric without validation", lambda ws, t: _train(ws, t, "--best-metric", "iou"), 2,
     "argument --best-metric: "),
    ("train into a work dir holding a checkpoint", lambda ws, t: _train(ws, t, "--work-dir", str(ws / "run")), 2,
     "argument --work-dir: "),
    ("train -o whose work dir holds a checkpoint", lambda ws, t: _train(ws, t, output=ws / "run.safetensors"), 2,
     "pass --resume"),
    ("train --resume --optimizer sgd (an adam run)", lambda ws, t: _resume(ws, t, "--optimizer", "sgd"), 2,
     "argument --optimizer: "),
    ("train --resume --depth 3", lambda ws, t: _resume(ws, t, "--depth", "3"), 2, "argument --depth: "),
    ("train --resume --num-classes 3", lambda ws, t: _resume(ws, t, "--num-classes", "3"), 2,
     "argument --num-classes: "),
    ("train --resume --percentiles 2 99", lambda ws, t: _resume(ws, t, "--percentiles", "2", "99"), 2,
     "argument --percentiles: "),
    ("train --resume --clip", lambda ws, t: _resume(ws, t, "--clip"), 2, "argument --clip/--no-clip: "),
    ("train --resume --recipe paper", lambda ws, t: _resume(ws, t, "--recipe", "paper"), 2, "argument --recipe: "),
    ("train --resume --tile-size 60", lambda ws, t: _resume(ws, t, "--tile-size", "60"), 2, "argument --tile-size: "),
    ("train --resume --seed 5", lambda ws, t: _resume(ws, t, "--seed", "5"), 2, "argument --seed: "),
    ("train --resume --epochs 1 (2 done)", lambda ws, t: _resume(ws, t, "--epochs", "1"), 2, "argument --epochs: "),
    ("segment --tile-size beyond memory", lambda ws, t: _segment(ws, t, "--tile-size", "100002"), 2,
     "--tile-size"),
    ("segment --batch-size beyond memory", lambda ws, t: _segment(ws, t, "--tile-size", "4002", "--batch-size",
                                                                  "100000"), 2, "GiB"),
    ("demo -o a file", lambda ws, t: ["demo", "-o", str(ws / "a_file")], 2, "-o/--output"),
    ("demo --threads -1", lambda ws, t: ["demo", "--threads", "-1", "-o", str(t / "d")], 2, "--threads"),
    ("sizes --depth 64", lambda ws, t: ["sizes", "--depth", "64"], 2, "--depth"),
    ("unknown command", lambda ws, t: ["segmnet"], 2, "segmnet"),
    # failures while working: exit 1, the file named, the others done
    ("segment a NaN image", lambda ws, t: ["segment", "-i", str(ws / "nan.tif"), "-o", str(t / "out"), "-m",
                                           str(ws / "model.safetensors"), "--no-progress"], 1, "NonFiniteInputError"),
    ("segment a complex image", lambda ws, t: ["segment", "-i", str(ws / "complex.tif"), "-o", str(t / "out"), "-m",
                                               str(ws / "model.safetensors"), "--no-progress"], 1,
     "complex.tif: image has pixels of type complex64"),
    ("segment a truncated TIFF", lambda ws, t: ["segment", "-i", str(ws / "truncated.tif"), "-o", str(t / "out"),
                                                "-m", str(ws / "model.safetensors"), "--no-progress"], 1,
     "truncated.tif"),
    ("segment a tiled TIFF above --max-pixels", lambda ws, t: [
        "segment", "-i", str(ws / "tiled.tif"), "-o", str(t / "out"), "-m", str(ws / "model.safetensors"),
        "--max-pixels", "1000", "--no-progress"], 1, "raise the limit to at least 4096"),
    ("segment a pattern matching nothing", lambda ws, t: ["segment", "-i", str(ws / "*.jpg"), "-o", str(t / "out"),
                                                          "-m", str(ws / "model.safetensors"), "--no-progress"], 2,
     "no image to segment"),
]


@pytest.mark.parametrize("argv, status, named", [pytest.param(*case[1:], id=case[0]) for case in CLI])
def test_cli_refuses(ws, tmp_path, capsys, argv, status, named):
    arguments = argv(ws, tmp_path)
    before, written_before = snapshot(ws), snapshot(tmp_path)
    try:
        got = cli.main(arguments)
    except SystemExit as exit_:          # argparse's own errors
        got = exit_.code
    err = capsys.readouterr().err
    assert got == status, err
    assert named in err
    assert "Traceback" not in err and "Task was destroyed" not in err
    assert snapshot(ws) == before
    if status == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert snapshot(tmp_path) == written_before          # nothing written, not even a folder's content
        assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()


def test_debug_shows_the_traceback(ws, tmp_path, capsys, monkeypatch):
    argv = _segment(ws, tmp_path, model=tmp_path / "nope.safetensors")
    with pytest.raises(BadArgument, match="nope.safetensors"):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("UNET_FAST_DEBUG", "1")
    with pytest.raises(BadArgument):
        cli.main(argv)


def test_debug_shows_the_traceback_of_a_file_that_failed(ws, tmp_path, capsys, monkeypatch):
    """A FAILED line (a truncated TIFF among the inputs) is one line; with --debug, Python's traceback follows it,
    as the README says; the setting ends with the command."""
    monkeypatch.delenv("UNET_FAST_DEBUG", raising=False)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "cut.tif").write_bytes((ws / "in" / "a.tif").read_bytes()[:300])
    argv = _segment(ws, tmp_path, out=tmp_path / "out")
    argv[argv.index(str(ws / "in"))] = str(folder)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "cut.tif" in err and "Traceback" not in err
    assert cli.main(["--debug", *argv]) == 1
    err = capsys.readouterr().err
    failed = err[err.index("FAILED"):]
    assert "cut.tif" in failed and "Traceback (most recent call last)" in failed
    assert "UNET_FAST_DEBUG" not in __import__("os").environ


def test_help_gives_every_flag_a_description_and_its_default(capsys):
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        text = command.format_help()
        assert "Writes" in text or "OUTDIR/" in text or name in ("info", "sizes"), name
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings}: no help"
                formatted = command._get_formatter()._get_help_string(action)
                assert action.required or "default" in formatted, f"{name} {action.option_strings}: no default"


# ---- data never lost: leftovers of killed runs, SIGTERM

def test_continue_removes_leftovers_of_killed_runs_and_nothing_else(ws, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    leftovers = [out / ".a.tif.0123abcd.partial.tif", out / ".b.tif.deadbeef.partial.tif"]
    for path in leftovers:
        path.write_bytes(b"")
    kept = [out / ".a.tif.notes", out / "a.tif.0123abcd.partial.tif", out / ".c.tif.0123abcd.partial.tif"]
    for path in kept:
        path.write_bytes(b"mine")
    assert cli.main(_segment(ws, tmp_path, "--continue")) == 0
    assert not any(path.exists() for path in leftovers)
    assert all(path.read_bytes() == b"mine" for path in kept)
    assert {"a.tif", "b.tif"} <= set(os.listdir(out))


def test_sigterm_during_a_file_leaves_no_partial_file(tmp_path):
    """kill (SIGTERM) in the middle of a file: the command unwinds as for Ctrl-C, removing the file
    being written, and exits with 128 + 15. (In this process: a thread sends the signal once the
    hidden partial file exists; a late signal would only reach the handler installed here.)"""
    import threading

    tifffile.imwrite(tmp_path / "big.tif", np.random.default_rng(0).integers(0, 255, (1200, 1200), np.uint8),
                     tile=(256, 256))
    unet_fast.save_model(tiny_model(), tmp_path / "m.safetensors")
    late = []
    previous = signal.signal(signal.SIGTERM, lambda *_: late.append(True))
    done = threading.Event()

    def kill_when_writing():
        while not done.is_set() and not list((tmp_path / "out").glob(".big.tif.*.partial.tif")):
            time.sleep(0.01)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=kill_when_writing)
    killer.start()
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["segment", "-i", str(tmp_path / "big.tif"), "-o", str(tmp_path / "out"), "-m",
                      str(tmp_path / "m.safetensors"), "--tile-size", "20", "--no-progress"])
    finally:
        done.set()
        killer.join()
        signal.signal(signal.SIGTERM, previous)
    assert exit_.value.code == 128 + signal.SIGTERM and not late
    assert os.listdir(tmp_path / "out") == []


def test_failed_lines_say_the_type_only_where_it_adds_something(tmp_path):
    """segment's and measure's FAILED lines: "ValueError: has 3 channel(s)" read like a crash; a plain ValueError
    or OSError says what it means without its type, which other errors keep (the file is named first, once)."""
    import zlib

    from unet_fast.checks import failure_reason

    path = tmp_path / "a.tif"
    assert failure_reason(ValueError("has 3 channel(s)\n  the model expects 1")) == \
        "has 3 channel(s) the model expects 1"
    assert failure_reason(ValueError(f"{path}: holds no image series"), path) == "holds no image series"
    assert failure_reason(FileNotFoundError(2, "No such file or directory", str(path))) == \
        f"[Errno 2] No such file or directory: '{path}'"
    assert failure_reason(NonFiniteInputError("image holds NaN")) == "NonFiniteInputError: image holds NaN"
    assert failure_reason(zlib.error("incorrect header check")) == "zlib.error: incorrect header check"
    assert failure_reason(RuntimeError()) == "RuntimeError: RuntimeError"
    assert failure_reason(ValueError(str(path)), path) == "ValueError"
