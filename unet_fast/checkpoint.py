"""Training checkpoints: one safetensors file holding the model's weights, the optimizer's state, the
epoch, the history, the seed and every rank's random states, written atomically, so that a run
resumes exactly where it stopped (``fit(resume=...)``). A model file for inference is a different
format (``unet_fast.save_model``).
"""
from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from .architecture import check_config, parameter_shapes
from .image_io import write_bytes_atomically

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "restore_rng_state", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "unet_fast.checkpoint/2"     # /2: one set of RNG states per rank
READABLE_FORMATS = (CHECKPOINT_FORMAT, "unet_fast.checkpoint/1")


def save_checkpoint(path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int,
                    history: list[dict] | None = None, seed: int | None = None,
                    rng_states: list[dict] | None = None, recipe: dict | None = None,
                    tile_size: int | None = None, amp: bool | None = None, best_metric: str | None = None,
                    time_limit: float | None = None) -> Path:
    """One safetensors file: model weights, optimizer state, epoch, history and RNG states; atomic.

    rng_states: every rank's random states in rank order (``fit`` gathers them); default: this
    process's only, as one rank. recipe: the run's training values (``dataclasses.asdict`` of its
    ``Recipe``) and tile_size the tile it drew, amp whether it trained in bf16 autocast and best_metric what
    chose its best model, so that a resume can tell a changed option (``unet-fast train --resume`` refuses
    one); time_limit the run's wall-clock budget in seconds, over which its schedule anneals; the number of
    classes is in the model's config."""
    tensors = {f"model.{key}": value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    scalars = {}
    for index, entry in optimizer_state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    if rng_states is None:
        device = torch.device("cuda") if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        rng_states = [rng_state(device or torch.device("cpu"))]
    for rank, states in enumerate(rng_states):
        tensors.update({f"rng.{rank}.{name}": value for name, value in states.items()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "world_size": str(len(rng_states)),
        "epoch": str(epoch),
        "seed": json.dumps(seed),
        "history": json.dumps(history or []),
        "model_config": json.dumps(model.config() if hasattr(model, "config") else None),
        "num_classes": json.dumps(getattr(model, "num_classes", None)),
        "recipe": json.dumps(recipe),
        "tile_size": json.dumps(tile_size),
        "amp": json.dumps(amp),
        "best_metric": json.dumps(best_metric),
        "time_limit": json.dumps(time_limit),
        "optimizer.param_groups": json.dumps(optimizer_state["param_groups"]),
        "optimizer.scalars": json.dumps(scalars),
    }
    return write_bytes_atomically(path, save_safetensors(tensors, metadata))


def load_checkpoint(path, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Read a checkpoint; load its weights into ``model`` and state into ``optimizer`` when given.

    Returns {"epoch", "history", "seed", "model_config", "num_classes", "recipe" (a dict of the
    run's ``Recipe``), "tile_size", "amp", "best_metric", "time_limit", "rng" (a list: each rank's dict of random
    states), "model_state"}; num_classes, recipe, tile_size, amp, best_metric and time_limit are None in
    checkpoints written before they were recorded (best_metric also in runs without validation, time_limit in
    runs without one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {error}") from error
    if metadata.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{str(path)!r} is not a unet_fast checkpoint (format {metadata.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}); a model file is loaded with unet_fast.load_model")
    fields = _checked_metadata(metadata, tensors, path)   # a checkpoint is untrusted input: before any use
    model_state = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    if model is not None:
        model.load_state_dict(model_state)
    if optimizer is not None:
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer.state."):
                index, name = key[len("optimizer.state."):].split(".", 1)
                state.setdefault(int(index), {})[name] = value
        for key, value in json.loads(metadata["optimizer.scalars"]).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        try:
            optimizer.load_state_dict({"state": state,
                                       "param_groups": json.loads(metadata["optimizer.param_groups"])})
        except (KeyError, ValueError) as error:     # e.g. SGD's momentum buffers missing from Adam's state
            raise ValueError(f"checkpoint {str(path)!r}: its optimizer state does not fit a "
                             f"{type(optimizer).__name__} optimizer ({type(error).__name__}: {error}); resume "
                             f"with the optimizer it was trained with") from error
    rng: list[dict] = [{} for _ in range(fields["world_size"])]
    for key, value in tensors.items():
        if key.startswith("rng."):      # rng.<rank>.<generator>; format /1 had one process: rng.<generator>
            rank, name = _rng_key(key)
            rng[rank][name] = value
    del fields["world_size"]
    return {**fields, "rng": rng, "model_state": model_state}


def _rng_key(key: str) -> tuple[int, str]:
    """(rank, generator) of a tensor named rng.<rank>.<generator> (or rng.<generator>: rank 0)."""
    rank, name = key[4:].split(".", 1) if key[4:5].isdigit() else ("0", key[4:])
    return int(rank), name


def _checked_metadata(metadata: dict, tensors: dict, path) -> dict:
    """The checkpoint's values, each of its type and range (ValueError naming the file otherwise); world_size
    from the random states it holds, which must agree with the one it declares."""
    def bad(what: str):
        return ValueError(f"checkpoint {str(path)!r} is damaged or was not written by unet_fast: {what}")

    try:
        fields = {"epoch": json.loads(metadata["epoch"]), "history": json.loads(metadata["history"]),
                  "seed": json.loads(metadata["seed"]), "model_config": json.loads(metadata["model_config"]),
                  "num_classes": json.loads(metadata.get("num_classes", "null")),
                  "recipe": json.loads(metadata.get("recipe", "null")),
                  "tile_size": json.loads(metadata.get("tile_size", "null")),
                  "amp": json.loads(metadata.get("amp", "null")),
                  "best_metric": json.loads(metadata.get("best_metric", "null")),
                  "time_limit": json.loads(metadata.get("time_limit", "null"))}
        optimizer = {"param_groups": json.loads(metadata["optimizer.param_groups"]),
                     "scalars": json.loads(metadata["optimizer.scalars"])}
        ranks = {_rng_key(key)[0] for key in tensors if key.startswith("rng.")}
        declared = json.loads(metadata.get("world_size", "1"))
    except (KeyError, ValueError) as error:
        raise bad(f"{type(error).__name__}: {error}") from None

    def whole(value, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    def number(value) -> bool:      # a value of a history row or of the optimizer
        return value is None or isinstance(value, (int, float)) or (isinstance(value, list) and all(
            isinstance(item, (int, float)) for item in value))

    def group(values) -> bool:      # numbers where the optimizer computes with them; its flags any JSON scalar
        return isinstance(values, dict) and all(number(value) if key in NUMERIC_GROUP_VALUES else
                                                value is None or isinstance(value, (int, float, str))
                                                for key, value in values.items())

    world = max(ranks) + 1 if ranks else 1
    checks = [("epoch", whole(fields["epoch"], 0)),
              ("history", isinstance(fields["history"], list) and all(
                  isinstance(r, dict) and whole(r.get("step"), 0) and whole(r.get("epoch"), 1)
                  and all(number(v) and not isinstance(v, list) for v in r.values()) for r in fields["history"])),
              ("seed", fields["seed"] is None or whole(fields["seed"], 0)),
              ("model_config", fields["model_config"] is None or isinstance(fields["model_config"], dict)),
              ("num_classes", fields["num_classes"] is None or whole(fields["num_classes"], 1)),
              ("recipe", fields["recipe"] is None or isinstance(fields["recipe"], dict)),
              ("tile_size", fields["tile_size"] is None or whole(fields["tile_size"], 1)),
              ("amp", fields["amp"] is None or isinstance(fields["amp"], bool)),
              ("best_metric", fields["best_metric"] is None or isinstance(fields["best_metric"], str)),
              ("time_limit", fields["time_limit"] is None or (
                  isinstance(fields["time_limit"], (int, float)) and not isinstance(fields["time_limit"], bool)
                  and math.isfinite(fields["time_limit"]) and fields["time_limit"] > 0)),
              ("optimizer.param_groups", isinstance(optimizer["param_groups"], list)
               and all(map(group, optimizer["param_groups"]))),
              ("optimizer.scalars", isinstance(optimizer["scalars"], dict) and all(
                  key.split(".", 1)[0].isdigit() and "." in key and number(value)
                  for key, value in optimizer["scalars"].items())),
              ("world_size", whole(declared, 1) and declared == world and (not ranks or ranks == set(range(world))))]
    wrong = [name for name, ok in checks if not ok]
    if wrong:
        raise bad(f"its {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not what a checkpoint holds")
    wrong = _tensor_problems(tensors, fields["model_config"])
    if wrong:
        raise bad(f"{'; '.join(wrong[:3])}{f' (and {len(wrong) - 3} more)' if len(wrong) > 3 else ''}")
    return {**fields, "world_size": world}


#: the values of an optimizer's param_groups its step computes with (all numbers, or lists of numbers)
NUMERIC_GROUP_VALUES = ("params", "lr", "momentum", "dampening", "weight_decay", "eps", "betas")


def _tensor_problems(tensors: dict, model_config) -> list[str]:
    """What is wrong with a checkpoint's tensors, before any is used (a weight, an optimizer state or a random state of
    another shape or type failed in load_state_dict, at the first step or in torch.set_rng_state, naming no file; a
    NaN weight trained a whole epoch and then called the damaged checkpoint the one to resume from): the weights of
    the network ``model_config`` describes (names, shapes: where it is a unet_fast network's), floating point and
    finite; each optimizer state of its parameter's shape (its step one number); the random states' layouts."""
    shapes = _network_shapes(model_config)
    weights = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    problems = []
    if shapes is not None and set(shapes) != set(weights):
        problems += [f"weights {what} {sorted(names)[:3]}{' ...' if len(names) > 3 else ''} for its network"
                     for what, names in (("missing", set(shapes) - set(weights)),
                                         ("unexpected", set(weights) - set(shapes))) if names]
    for name, value in weights.items():
        if shapes is not None and name in shapes and tuple(value.shape) != shapes[name]:
            problems.append(f"weight {name} of shape {tuple(value.shape)}, its network's {shapes[name]}")
        elif not value.is_floating_point():
            if shapes is not None:      # (another model may have integer buffers: BatchNorm's count)
                problems.append(f"weight {name} of type {value.dtype}")
        elif not bool(torch.isfinite(value).all()):
            problems.append(f"weight {name} holding NaN or infinite values")
    parameters = list(shapes.values()) if shapes is not None else None
    for key, value in tensors.items():
        if not key.startswith("optimizer.state."):
            continue
        index, _, name = key[len("optimizer.state."):].partition(".")
        if not (index.isdigit() and name) or (parameters is not None and int(index) >= len(parameters)):
            problems.append(f"optimizer state {key!r} of no parameter")
        elif not value.is_floating_point() or (value.numel() != 1 if name == "step" else
                                               parameters is not None and tuple(value.shape) != parameters[int(index)]):
            problems.append(f"optimizer state {key} of shape {tuple(value.shape)} and type {value.dtype}"
                            + (" (a step is one number)" if name == "step" else f" (its parameter's shape: "
                               f"{parameters[int(index)]})" if parameters is not None else ""))
    layouts = {"cpu": (torch.uint8, (torch.get_rng_state().numel(),)), "numpy": (torch.int64, (624,)),
               "numpy.scalars": (torch.float64, (3,)), "python": (torch.int64, (625,)),
               "python.scalars": (torch.float64, (2,))}
    for key, value in tensors.items():
        if key.startswith("rng."):
            name = _rng_key(key)[1]
            dtype, shape = layouts.get(name, (torch.uint8, None) if name.split(".")[0] == "cuda" else (None, None))
            if dtype is not None and (value.dtype != dtype or value.dim() != 1
                                      or shape not in (None, tuple(value.shape))):
                problems.append(f"random state {key} of shape {tuple(value.shape)} and type {value.dtype}")
    return problems


def _network_shapes(model_config) -> dict | None:
    """The weights' names and shapes of the unet_fast network ``model_config`` describes; None for the config of
    another model, or one that describes no network (what builds the network from it says why)."""
    if not isinstance(model_config, dict) or not {"in_channels", "num_classes", "depth", "base_channels"} <= set(
            model_config):
        return None
    arguments = {key: value for key, value in model_config.items() if key not in ("class", "backend")}
    try:
        check_config(**arguments)
    except (TypeError, ValueError):
        return None
    return parameter_shapes(*(arguments[key] for key in ("in_channels", "num_classes", "depth", "base_channels")))


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random states as tensors: torch's CPU and ``device``'s CUDA generators, numpy's
    and Python's global ones (which user augmentations may draw from)."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    states = {"cpu": torch.get_rng_state(),
              "numpy": torch.from_numpy(keys.astype(np.int64)),
              "numpy.scalars": torch.tensor([position, has_gauss, gauss], dtype=torch.float64),
              "python": torch.tensor(words, dtype=torch.int64),
              "python.scalars": torch.tensor([version, math.nan if gauss_next is None else gauss_next],
                                             dtype=torch.float64)}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_state(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if "numpy" in states:
        position, has_gauss, gauss = states["numpy.scalars"].tolist()
        np.random.set_state(("MT19937", states["numpy"].numpy().astype(np.uint32), int(position), int(has_gauss),
                             gauss))
    if "python" in states:
        version, gauss_next = states["python.scalars"].tolist()
        random.setstate((int(version), tuple(states["python"].tolist()),
                         None if math.isnan(gauss_next) else gauss_next))
    cuda = states.get("cuda", states.get(f"cuda.{device.index or 0}"))     # format /1: one state per device
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def restore_rng_state(rng: list[dict], rank: int, world: int, device: torch.device, path) -> None:
    """This rank takes back its own random states from a checkpoint's ``rng`` (``load_checkpoint``). A
    checkpoint of another world size cannot continue exactly (each rank's share of the tiles changes
    too), but resuming on fewer or more GPUs is a normal need: warn, give the ranks both runs have
    their own states, and leave the others theirs."""
    if len(rng) != world and rank == 0:
        warnings.warn(f"resume: checkpoint {str(path)!r} was written by {len(rng)} process(es) and this run has "
                      f"{world}: weights, optimizer state and epoch continue, but the random numbers "
                      f"and each process's tiles differ from an uninterrupted run", stacklevel=3)
    if rank < len(rng):
        _set_rng_state(rng[rank], device)
