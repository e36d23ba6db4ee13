"""Model files: one .safetensors file holding the weights and, in its metadata, a JSON config.

The config records the architecture (``model.config()``), the input normalisation, class names,
the unet_fast version and any user metadata, so a file alone rebuilds the model and tells
inference how to prepare images. Nothing here can execute code from a file: safetensors holds
only tensors, and a ``.pt`` state_dict (bare or in a training checkpoint) is read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import pickle
import sys
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file, safe_open

from .architecture import check_config, parameter_shapes
from .checks import BadArgument, check_device, check_writable_file
from .image_io import atomic_path
from .model import BACKENDS, UNet
from .normalization import Normalization
from .pixel_size import PixelSize
from .rescale import check_scale, model_scale

FORMAT = "unet_fast-model"
FORMAT_VERSION = 1
METADATA_KEY = "unet_fast"
SUFFIX = ".safetensors"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")      # safetensors' names of the dtypes weights may have
TORCH_FLOAT_DTYPES = dict(zip((torch.float64, torch.float32, torch.float16, torch.bfloat16), FLOAT_DTYPES))


class ModelFileError(ValueError):
    """A model file that cannot be used: unreadable, not a model, or claiming what its contents are
    not. The message starts with the file's path."""


def check_model_path(path, argument: str = "path") -> Path:
    """The path ``save_model`` will write, checked before any work: the suffix, and a parent folder that
    exists (or can be made) and is writable (``checks.BadArgument`` naming ``argument`` otherwise).
    Run it before training, not after."""
    path = Path(path)
    if path.suffix != SUFFIX:
        fix = f"; use {str(path.with_suffix(SUFFIX))!r}" if path.stem and not path.name.startswith(".") else ""
        raise BadArgument(argument, f"a model file must end in {SUFFIX}, got {str(path)!r}{fix}")
    return check_writable_file(path, argument)


def save_model(model: torch.nn.Module, path, *, normalization: Normalization | None = None,
               class_names: list[str] | None = None, input_scale: float | None = None, **metadata) -> Path:
    """Write ``model`` to ``path`` (.safetensors) atomically; returns the path.

    normalization: the rule training used (default: ``model.normalization`` if set, else
    ``Normalization()``); class_names: one per output class (default: ``model.class_names`` if
    set, else "class0", ...); input_scale: the factor images are resampled by before the network
    (``unet_fast.rescale``; default: ``model.input_scale`` if set, else 1); metadata: further
    JSON-serialisable values (e.g. epochs=100).
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"path must end in {SUFFIX}, got {str(path)!r}")
    model = unwrapped(model)
    if not hasattr(model, "config"):
        raise TypeError(f"model must have a config() method giving its constructor arguments "
                        f"(unet_fast.UNet does), got {type(model).__name__}")
    normalization = normalization or getattr(model, "normalization", None) or Normalization()
    if not isinstance(normalization, Normalization):
        raise TypeError(f"normalization must be a unet_fast.Normalization, got {type(normalization).__name__}")
    input_scale = model_scale(model, input_scale, "input_scale")
    num_classes = model.config()["num_classes"]
    class_names = list(class_names or class_names_of(model))
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but the model has {num_classes} classes")
    from . import __version__

    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {"class": type(model).__name__, **model.config()},
        "normalization": normalization.to_dict(),
        "class_names": class_names,
        "input_scale": input_scale,
        "unet_fast_version": __version__,
        "metadata": metadata,
    }
    try:
        text = json.dumps(config)
    except TypeError as error:
        raise TypeError(f"metadata must be JSON-serialisable: {error}") from None
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    bad = next((name for name, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()),
               None)
    if bad is not None:
        raise ValueError(f"the model's {bad} holds NaN or infinite values (did training diverge?); "
                         f"not writing {str(path)!r}, which load_model would refuse")
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata={METADATA_KEY: text})
    return path


def unwrapped(model):
    """The network inside torch.compile's and (Distributed)DataParallel's wrappers, in any nesting: a wrapper's
    state_dict names carry its prefix (STATE_DICT_PREFIXES), which a model file's names do not."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif "torch._dynamo.eval_frame" in sys.modules and isinstance(   # no compiled module without it
                model, sys.modules["torch._dynamo.eval_frame"].OptimizedModule):
            model = model._orig_mod
        else:
            return model


def class_names_of(model: torch.nn.Module) -> list[str]:
    """The model's class names (``model.class_names``, as a model file gives them), or class0, class1, ..."""
    return list(getattr(model, "class_names", None) or default_class_names(model.num_classes))


def default_class_names(num_classes: int) -> list[str]:
    """class0, class1, ...: the names of classes nobody named."""
    return [f"class{i}" for i in range(num_classes)]


def read_model_config(path) -> dict:
    """The JSON config stored in a .safetensors model file, checked (``check_model_config``); no
    weights are read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{path}: not a readable .safetensors file ({error})") from None
    if METADATA_KEY not in metadata:
        if str(metadata.get("format", "")).startswith("unet_fast.checkpoint"):   # checkpoint.CHECKPOINT_FORMAT
            raise ModelFileError(f"{path}: a training checkpoint of unet-fast train (what --resume reads), not a "
                                 f"model file: use the model train wrote with -o, or best.safetensors beside it")
        raise ModelFileError(f"{path}: not a unet_fast model file (no {METADATA_KEY!r} metadata); "
                             f"write it with unet_fast.save_model")
    try:
        config = json.loads(metadata[METADATA_KEY])
    except ValueError as error:
        raise ModelFileError(f"{path}: its {METADATA_KEY!r} metadata is not valid JSON ({error})") from None
    except RecursionError:      # "[[[[...": a file's header is up to 100 MB
        raise ModelFileError(f"{path}: its {METADATA_KEY!r} metadata nests too deeply to be a model's "
                             f"config") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: its {METADATA_KEY!r} metadata is a {type(config).__name__}, not an object")
    if config.get("format") != FORMAT or not isinstance(config.get("format_version", 0), int) \
            or config.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: unsupported model file format {config.get('format')!r} "
                             f"version {config.get('format_version')!r}")
    check_model_config(config, path)
    return config


def check_model_config(config: dict, path) -> None:
    """ModelFileError naming ``path`` unless ``config`` describes a model this package can build:
    the architecture's types, ranges and size limits (``architecture.check_config``), the
    normalisation, and one class name per class. Pure arithmetic: nothing is allocated."""
    architecture = config.get("architecture")
    if not isinstance(architecture, dict):
        raise ModelFileError(f"{path}: 'architecture' must be an object, got {architecture!r:.80}")
    known = {"class", "in_channels", "num_classes", "depth", "base_channels", "padding", "dropout", "backend"}
    if set(architecture) - known:
        raise ModelFileError(f"{path}: unknown architecture fields {sorted(set(architecture) - known)}")
    arguments = {k: v for k, v in architecture.items() if k not in ("class", "backend")}
    try:
        check_config(**arguments)
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: architecture: {error}") from None
    if architecture.get("backend", "auto") not in BACKENDS:
        raise ModelFileError(f"{path}: architecture: backend must be one of {BACKENDS}, "
                             f"got {architecture.get('backend')!r:.80}")
    try:
        Normalization.from_dict(config.get("normalization"))
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: normalization: {error}") from None
    names = config.get("class_names")
    classes = architecture.get("num_classes", 2)
    if names is not None and (not isinstance(names, list) or len(names) != classes
                              or not all(isinstance(n, str) for n in names)):
        raise ModelFileError(f"{path}: class_names must be a list of {classes} strings, got {names!r:.80}")
    try:
        check_scale(config.get("input_scale", 1.0), "input_scale")
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from None
    if not isinstance(config.get("metadata", {}), dict):
        raise ModelFileError(f"{path}: metadata must be an object, got {config.get('metadata')!r:.80}")
    pixel_size = config.get("metadata", {}).get("pixel_size")   # the training images' (segment compares, export writes)
    try:
        if pixel_size is not None and not isinstance(pixel_size, dict):
            raise TypeError("must be an object with y, x and unit")
        if pixel_size is not None:
            PixelSize.from_dict(pixel_size)
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: metadata pixel_size {pixel_size!r:.80}: {error}") from None


def _check_tensors(shapes: dict, dtypes: dict, architecture: dict, path) -> None:
    """The file's tensors (names, shapes, dtypes; read from its header) are the ones ``architecture`` has."""
    expected = parameter_shapes(*(architecture.get(k, d) for k, d in
                                  (("in_channels", 1), ("num_classes", 2), ("depth", 5), ("base_channels", 64))))
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{path}: its tensors do not match its architecture ({_describe(architecture)}): "
                             + "; ".join(f"{what} {names[:5]}{' ...' if len(names) > 5 else ''}"
                                         for what, names in (("missing", missing), ("unexpected", unexpected))
                                         if names))
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ModelFileError(f"{path}: tensor {name} has shape {tuple(shapes[name])}, but its architecture "
                                 f"({_describe(architecture)}) needs {shape}")
        if dtypes[name] not in FLOAT_DTYPES:
            raise ModelFileError(f"{path}: tensor {name} is {dtypes[name]}; weights must be floating point "
                                 f"({', '.join(FLOAT_DTYPES)})")


def _check_loaded(config: dict, state: dict, path) -> None:
    """A config and state_dict read whole (a .pt file, a bioimage.io package): the same checks as a
    .safetensors file's, before anything is built from them."""
    check_model_config(config, path)
    _check_tensors({n: tuple(t.shape) for n, t in state.items()},
                   {n: TORCH_FLOAT_DTYPES.get(t.dtype, str(t.dtype)) for n, t in state.items()},
                   config["architecture"], path)
    meta = next((name for name, tensor in state.items() if tensor.is_meta), None)
    if meta is not None:
        raise ModelFileError(f"{path}: tensor {meta} is a meta tensor (a shape without values, as a model built on "
                             f"the 'meta' device saves); weights must hold values")
    sparse = next((name for name, tensor in state.items() if tensor.layout != torch.strided), None)
    if sparse is not None:
        raise ModelFileError(f"{path}: tensor {sparse} is sparse ({state[sparse].layout}); weights must be dense")
    _check_finite(state, path)


def _check_finite(state: dict, path) -> None:
    """Every weight finite, as the model holds it: float32, so a float64 weight beyond its range (1e39) counts."""
    for name, tensor in state.items():
        finite = torch.isfinite(tensor.float() if tensor.dtype == torch.float64 else tensor)
        if not finite.all():
            count = int((~finite).sum())
            raise ModelFileError(f"{path}: tensor {name} holds {count} NaN or infinite value(s) of "
                                 f"{math.prod(tensor.shape)}"
                                 f"{' (once float32, as the model holds it)' if tensor.dtype == torch.float64 else ''}"
                                 f"; the weights are corrupt (or training diverged)")


def _describe(architecture: dict) -> str:
    return ", ".join(f"{k}={architecture[k]}" for k in ("in_channels", "num_classes", "depth", "base_channels")
                     if k in architecture)


def _read_safetensors(path) -> tuple[dict, dict]:
    """(config, state) of a .safetensors model file; everything the header claims is checked before a
    tensor is read, and the tensors' values before anything is built from them."""
    config = read_model_config(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            _check_tensors({n: s.get_shape() for n, s in slices.items()},
                           {n: s.get_dtype() for n, s in slices.items()}, config["architecture"], path)
            state = {name: f.get_tensor(name) for name in slices}
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{path}: not a readable .safetensors file ({error})") from None
    _check_finite(state, path)
    return config, state


def load_model(path, *, device="cpu", backend: str | None = None) -> UNet:
    """Rebuild a model saved by ``save_model`` as a ``unet_fast.UNet`` (in eval mode, on ``device``).

    backend: the UNet's backend (default: the one saved, else "auto"). The returned model carries
    ``normalization`` (a Normalization), ``class_names``, ``metadata`` and ``input_scale`` (the factor
    inference resamples images by: ``unet_fast.rescale``; 1 for files without one). A ``.pt``/``.pth`` file is
    read only with ``torch.load(weights_only=True)``; it may hold a state_dict, bare or as a training
    script saved it (see ``_unwrap_state_dict``), and the UNet its shapes describe is built around it
    (valid padding, default normalisation). A bioimage.io package (.zip, or its rdf.yaml) of a U-Net
    unet_fast can represent is read by ``bioimageio_package.read_package``.
    """
    from .bioimageio_package import is_package, read_package

    path = Path(path)
    check_device(device)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file (.safetensors, or .pt/.pth)")
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} " + ("is not a regular file" if path.exists()
                                                                else "does not exist"))
    if is_package(path):
        config, state = read_package(path)
        _check_loaded(config, state, path)
    elif path.suffix in (".pt", ".pth"):
        state = _unwrap_state_dict(load_weights_only(path, path), path)
        config = {"architecture": _architecture_from_state(state, path), "normalization": Normalization().to_dict(),
                  "class_names": None, "metadata": {}}
        _check_loaded(config, state, path)
    elif path.suffix == SUFFIX:
        config, state = _read_safetensors(path)
    else:
        raise ModelFileError(f"{path}: model files end in {SUFFIX} (or .pt/.pth for a state_dict, "
                             f".zip or rdf.yaml for a bioimage.io package)")
    architecture = dict(config["architecture"])
    architecture.pop("class", None)  # whichever U-Net class saved it: they share one state_dict format
    if backend is not None:
        architecture["backend"] = backend
    model = UNet(**architecture)
    model.load_state_dict(state)
    model.normalization = Normalization.from_dict(config["normalization"])
    model.class_names = config["class_names"] or default_class_names(model.num_classes)
    model.metadata = config.get("metadata", {})
    model.input_scale = float(config.get("input_scale", 1.0))
    return model.to(device).eval()


def load_weights_only(source, path):
    """``torch.load(source, weights_only=True)`` (a file or a file-like object: a package's weights), its errors
    naming ``path``: a file that is no PyTorch file, or one holding objects other than tensors, which are refused."""
    if _is_torchscript_archive(source):
        # torch.load's own error advises weights_only=False, which would run the file's code
        raise ModelFileError(
            f"{path}: a TorchScript export (what `unet-fast export --format torchscript` and torch.jit.save write), "
            f"not a model file: it holds code, which unet_fast never loads. unet_fast loads its {SUFFIX} model files "
            f"(unet_fast.save_model, unet-fast train -o) or a plain state_dict (.pt/.pth): use the model file this "
            f"export was made from")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests weights_only=False, the one thing we must never do for a user
        detail = next((line.split(" was not")[0].split("error: ")[-1].strip()
                       for line in str(error).splitlines() if "Unsupported" in line), "")
        raise pickle.UnpicklingError(
            f"{path}: refused: it holds objects other than tensors and plain containers"
            f"{f' ({detail})' if detail else ''}, and unet_fast never unpickles arbitrary objects. "
            "If you trust the file, save its weights alone and load that file: "
            "torch.save(checkpoint['state_dict'], 'weights.pt'), or save_model(...)") from error
    except (RuntimeError, OSError, EOFError) as error:   # truncated, not a zip or pickle at all
        raise ModelFileError(f"{path}: not a readable PyTorch file ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from None


def _is_torchscript_archive(source) -> bool:
    """Whether ``source`` (a path or a seekable file-like object, left where it was) is a zip archive laid out as
    TorchScript's (torch.jit.save): a ``constants.pkl`` record in its top folder, torch.load's own test."""
    position = source.tell() if hasattr(source, "tell") else None
    try:
        with zipfile.ZipFile(source) as archive:
            return any(name.partition("/")[2] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    finally:
        if position is not None:
            source.seek(position)


STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")   # where training scripts put the weights
STATE_DICT_PREFIXES = ("module.", "_orig_mod.")                  # added by DDP and torch.compile wrappers


def _unwrap_state_dict(loaded, path) -> dict:
    """The state_dict in a loaded .pt file: bare, or under one of STATE_DICT_KEYS of a checkpoint
    dict (with epoch, optimizer, ... beside it), with STATE_DICT_PREFIXES taken off its names."""
    def is_state_dict(value):
        return (isinstance(value, dict) and len(value) > 0
                and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))

    state = loaded
    if isinstance(loaded, dict) and not is_state_dict(loaded):
        state = next((loaded[key] for key in STATE_DICT_KEYS if is_state_dict(loaded.get(key))), None)
    if state is None or not is_state_dict(state):
        found = (f"a dict with top-level keys {sorted(map(str, loaded))[:20]}" if isinstance(loaded, dict)
                 else f"a {type(loaded).__name__}")
        raise ModelFileError(f"{path}: found {found}; expected a state_dict (parameter name -> tensor), or a "
                         f"dict holding one under {' or '.join(map(repr, STATE_DICT_KEYS))}")
    # repeatedly, in any order: DDP(torch.compile(model)) gives "module._orig_mod."
    while prefix := next((p for p in STATE_DICT_PREFIXES if all(name.startswith(p) for name in state)), None):
        state = {name[len(prefix):]: value for name, value in state.items()}
    return state


def _architecture_from_state(state: dict, path=None) -> dict:
    """Constructor arguments of a UNet read off its state_dict's shapes."""
    try:
        first = state["encoder.0.conv1.weight"]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("encoder."))
        head = state["head.weight"]
        return {"class": "UNet", "in_channels": first.shape[1], "num_classes": head.shape[0], "depth": depth,
                "base_channels": first.shape[0], "padding": "valid"}
    except (KeyError, ValueError, IndexError) as error:
        raise ModelFileError(f"{f'{path}: ' if path is not None else ''}the state_dict is not a unet_fast UNet's "
                             f"({'missing ' if isinstance(error, KeyError) else ''}{error})") from None
