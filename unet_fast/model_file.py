"""Model files: one .safetensors file holding the weights and, in its metadata, a JSON config.

The config records the architecture (``model.config()``), the input normalisation, class names,
the unet_fast version and any user metadata, so a file alone rebuilds the model and tells
inference how to prepare images. Nothing here can execute code from a file: safetensors holds
only tensors, and a ``.pt`` state_dict (bare or in a training checkpoint) is read with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open

from .image_io import atomic_path
from .model import UNet
from .normalization import Normalization

FORMAT = "unet_fast-model"
FORMAT_VERSION = 1
METADATA_KEY = "unet_fast"


def save_model(model: torch.nn.Module, path, *, normalization: Normalization | None = None,
               class_names: list[str] | None = None, **metadata) -> Path:
    """Write ``model`` to ``path`` (.safetensors) atomically; returns the path.

    normalization: the rule training used (default: ``model.normalization`` if set, else
    ``Normalization()``); class_names: one per output class (default: ``model.class_names`` if
    set, else "class0", ...); metadata: further JSON-serialisable values (e.g. epochs=100).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"path must end in .safetensors, got {str(path)!r}")
    if not hasattr(model, "config"):
        raise TypeError(f"model must have a config() method giving its constructor arguments "
                        f"(unet_fast.UNet does), got {type(model).__name__}")
    normalization = normalization or getattr(model, "normalization", None) or Normalization()
    if not isinstance(normalization, Normalization):
        raise TypeError(f"normalization must be a unet_fast.Normalization, got {type(normalization).__name__}")
    num_classes = model.config()["num_classes"]
    class_names = list(class_names or getattr(model, "class_names", None)
                       or [f"class{i}" for i in range(num_classes)])
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but the model has {num_classes} classes")
    from . import __version__

    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {"class": type(model).__name__, **model.config()},
        "normalization": normalization.to_dict(),
        "class_names": class_names,
        "unet_fast_version": __version__,
        "metadata": metadata,
    }
    try:
        text = json.dumps(config)
    except TypeError as error:
        raise TypeError(f"metadata must be JSON-serialisable: {error}") from None
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata={METADATA_KEY: text})
    return path


def read_model_config(path) -> dict:
    """The JSON config stored in a .safetensors model file (no weights are read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable .safetensors file ({error})") from None
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path}: not a unet_fast model file (no {METADATA_KEY!r} metadata); "
                         f"write it with unet_fast.save_model")
    config = json.loads(metadata[METADATA_KEY])
    if config.get("format") != FORMAT or config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model file format {config.get('format')!r} "
                         f"version {config.get('format_version')!r}")
    return config


def load_model(path, *, device="cpu", backend: str | None = None) -> UNet:
    """Rebuild a model saved by ``save_model`` as a ``unet_fast.UNet`` (in eval mode, on ``device``).

    backend: the UNet's backend (default: the one saved, else "auto"). The returned model carries
    ``normalization`` (a Normalization), ``class_names`` and ``metadata``. A ``.pt``/``.pth`` file is
    read only with ``torch.load(weights_only=True)``; it may hold a state_dict, bare or as a training
    script saved it (see ``_unwrap_state_dict``), and the UNet its shapes describe is built around it
    (valid padding, default normalisation). A bioimage.io package (.zip, or its rdf.yaml) of a U-Net
    unet_fast can represent is read by ``bioimageio_package.read_package``.
    """
    from .bioimageio_package import is_package, read_package

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    if is_package(path):
        config, state = read_package(path)
    elif path.suffix in (".pt", ".pth"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch's message suggests weights_only=False, the one thing we must never do for a user
            detail = next((line.split(" was not")[0].split("error: ")[-1].strip()
                           for line in str(error).splitlines() if "Unsupported" in line), "")
            raise pickle.UnpicklingError(
                f"{path}: refused: it holds objects other than tensors and plain containers"
                f"{f' ({detail})' if detail else ''}, and unet_fast never unpickles arbitrary objects. "
                "If you trust the file, save its weights alone and load that file: "
                "torch.save(checkpoint['state_dict'], 'weights.pt'), or save_model(...)") from error
        state = _unwrap_state_dict(loaded, path)
        config = {"architecture": _architecture_from_state(state), "normalization": Normalization().to_dict(),
                  "class_names": None, "metadata": {}}
    elif path.suffix == ".safetensors":
        config = read_model_config(path)
        state = load_file(str(path))
    else:
        raise ValueError(f"{path}: model files end in .safetensors (or .pt/.pth for a state_dict, "
                         f".zip or rdf.yaml for a bioimage.io package)")
    architecture = dict(config["architecture"])
    architecture.pop("class", None)  # whichever U-Net class saved it: they share one state_dict format
    if backend is not None:
        architecture["backend"] = backend
    model = UNet(**architecture)
    model.load_state_dict(state)
    model.normalization = Normalization.from_dict(config["normalization"])
    model.class_names = config["class_names"] or [f"class{i}" for i in range(model.num_classes)]
    model.metadata = config.get("metadata", {})
    return model.to(device).eval()


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
        raise ValueError(f"{path}: found {found}; expected a state_dict (parameter name -> tensor), or a "
                         f"dict holding one under {' or '.join(map(repr, STATE_DICT_KEYS))}")
    # repeatedly, in any order: DDP(torch.compile(model)) gives "module._orig_mod."
    while prefix := next((p for p in STATE_DICT_PREFIXES if all(name.startswith(p) for name in state)), None):
        state = {name[len(prefix):]: value for name, value in state.items()}
    return state


def _architecture_from_state(state: dict) -> dict:
    """Constructor arguments of a UNet read off its state_dict's shapes."""
    try:
        first = state["encoder.0.conv1.weight"]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("encoder."))
        head = state["head.weight"]
    except (KeyError, ValueError) as error:
        raise ValueError(f"the state_dict is not a unet_fast UNet's (missing {error})") from None
    return {"class": "UNet", "in_channels": first.shape[1], "num_classes": head.shape[0], "depth": depth,
            "base_channels": first.shape[0], "padding": "valid"}
