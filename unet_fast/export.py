"""Models out of unet_fast: ONNX, TorchScript and bioimage.io packages (``unet-fast export``).

Every format is made from the standalone U-Net (standalone_unet.py: standard torch operators only),
holding the model's weights: the fused kernels are an execution detail of unet_fast, unknown to
onnxruntime, torch.jit or the bioimage.io tools. The batch size and the image size stay free in every
format: any legal size (min + step * k pixels per axis, see unet_fast.geometry) runs.

Outputs are written atomically and never over an existing file.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from . import geometry, termination
from .image_io import discard, temporary_sibling
from .model_file import class_names_of
from .standalone_unet import UNet as StandaloneUNet

FORMAT_SUFFIXES = {"bioimageio": ".zip", "onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 18
STANDALONE_ARGUMENTS = ("in_channels", "num_classes", "depth", "base_channels", "padding")


def require(module: str, purpose: str):
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{purpose} needs the optional package {module!r}: install the extra, in the unet_fast "
                          f"checkout: pip install --no-build-isolation -e \".[export]\"") from None


def standalone_model(model: torch.nn.Module, cls: type = StandaloneUNet) -> StandaloneUNet:
    """A standalone U-Net (``cls``) holding ``model``'s weights (float32, CPU, eval mode).

    It is built on the meta device and takes the weights themselves (``assign``): those of a float32 CPU
    model are shared, not copied, and no random initial weights are made only to be overwritten (at depth 6,
    base 64 each would be another 474 MiB). So do not train it: export only reads it."""
    if not hasattr(model, "config"):
        raise TypeError(f"model must be a unet_fast UNet (or reference.UNet), got {type(model).__name__}")
    config = model.config()
    with torch.device("meta"):
        standalone = cls(**{name: config[name] for name in STANDALONE_ARGUMENTS})
    standalone.load_state_dict({name: value.detach().float().cpu() for name, value in model.state_dict().items()},
                               assign=True)
    return standalone.eval()


def check_output(output, format: str) -> Path:
    """The output path, if it is new and ends as ``format`` requires; else an error saying what to change."""
    if format not in FORMAT_SUFFIXES:
        raise ValueError(f"format must be one of {sorted(FORMAT_SUFFIXES)}, got {format!r}")
    output = Path(output)
    suffix = FORMAT_SUFFIXES[format]
    if output.name in ("", ".", "..") or output.is_dir():
        raise ValueError(f"output {str(output)!r} is a folder; give the file to write, ending in {suffix} for "
                         f"format {format!r}, e.g. {output / ('model' + suffix)}")
    if output.suffix.lower() != suffix:
        # ".pt" alone is a hidden file's name, not a suffix: its example is model.pt, not .pt.pt
        example = "model" + suffix if output.name.lower() == suffix else output.with_suffix(suffix).name
        raise ValueError(f"output {str(output)!r} must end in {suffix} for format {format!r}; e.g. {example}")
    if os.path.lexists(output):          # a dangling link too: writing it would write where it points
        raise FileExistsError(f"output {str(output)!r} already exists; choose another name or remove it "
                              f"(export never overwrites a file)")
    _check_writable(output)
    return output


def _check_writable(output: Path) -> None:
    """Refuse, before any work, an output that cannot be written: under a file, in a folder this user cannot
    write in, or named so long that its temporary sibling (``new_file``) is longer than a name can be. Each of
    these failed after the export's work, naming a file the user never gave (".NAME.<hex>.partial.pt") or
    nothing at all (torch.jit.save: "[enforce fail at inline_container.cc:747] . open file failed")."""
    from .checks import BadArgument, check_writable_file, existing_ancestor

    check_writable_file(output, "output")
    try:
        longest = os.pathconf(existing_ancestor(output.parent), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):     # no such limit known (or no pathconf: Windows)
        return
    length = len(os.fsencode(output.name))
    extra = len(os.fsencode(temporary_sibling(output).name)) - length
    if length + extra > longest:
        raise BadArgument("output", f"output {str(output)!r}: its name is {length} bytes; export writes it first as "
                                    f"a hidden temporary file beside it, {extra} bytes longer, and a name has at "
                                    f"most {longest} bytes there: use a name of at most {longest - extra} bytes")


@contextlib.contextmanager
def new_file(path: Path):
    """Yield a temporary path to write; on success it becomes ``path``, which must still not exist
    (``image_io.atomic_path`` without replacing: export never overwrites a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        termination.check()              # a run stopped by SIGTERM writes nothing
        try:
            os.link(temporary, path)     # unlike os.replace, refuses to replace a file made meanwhile
        except FileExistsError:
            raise FileExistsError(f"output {str(path)!r} appeared while it was being written; "
                                  f"nothing was overwritten") from None
        except OSError:                  # a file system without hard links
            if os.path.lexists(path):
                raise FileExistsError(f"output {str(path)!r} appeared while it was being written") from None
            os.replace(temporary, path)
    finally:
        discard(temporary)


def example_input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    """A legal input, min + 2 * step pixels a side: tracing at k = 0 or 1 would fix the size (torch.export
    refuses a batch of 1 or k < 2 for a dynamic axis). Its size costs no memory: the ONNX exporter traces with
    fake tensors and never runs the network on it."""
    config = model.config()
    size = (geometry.min_input_size(config["depth"], config["padding"])
            + 2 * geometry.size_step(config["depth"]))
    return torch.zeros(batch, config["in_channels"], size, size)


class OnnxUNet(StandaloneUNet):
    """The standalone U-Net as the ONNX file holds it. ONNX has no assertion: the size check of the forward
    holds for every size of the symbolic form min + step * k, so the exporter drops it, and onnxruntime would
    run an illegal size, flooring a max-pool of an odd size and cropping half a pixel off centre (a plausible,
    wrong result). So each 2x2 max-pool is a Reshape to 2x2 blocks and their maximum (the same numbers),
    which fails on an odd size: an illegal input size is refused by a Reshape node."""

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        return x.reshape(n, c, height // 2, 2, width // 2, 2).amax(dim=(3, 5))


#: where ONNX (metadata_props) and TorchScript (an extra file) files keep ``description``
METADATA_KEY, METADATA_FILE = "unet_fast", "unet_fast.json"


def description(model: torch.nn.Module) -> dict:
    """What a bare ONNX or TorchScript file cannot say by itself, for whoever runs it: the legal input sizes,
    the normalisation its inputs need, the classes of its output, the pixel size it was trained at."""
    from . import __version__
    from .normalization import Normalization

    config = model.config()
    depth, padding = config["depth"], config["padding"]
    normalization = getattr(model, "normalization", None) or Normalization()
    names = class_names_of(model)
    pixel_size = (getattr(model, "metadata", None) or {}).get("pixel_size")
    return {"producer": f"unet_fast {__version__}", "architecture": config,
            "input": {"name": "input", "layout": "NCHW", "dtype": "float32",
                      "legal_sizes": {"min": geometry.min_input_size(depth, padding), "step": geometry.size_step(depth)},
                      "normalization": normalization.to_dict()},
            "output": {"name": "logits", "layout": "NCHW", "class_names": list(names),
                       "pixels_lost_per_side": geometry.context(depth, padding),
                       "meaning": "logits: their softmax over C is each class's probability"},
            "pixel_size": pixel_size, "input_scale": float(getattr(model, "input_scale", 1.0))}


def export_onnx(model: torch.nn.Module, output, *, opset_version: int = ONNX_OPSET) -> Path:
    """Write ``model`` as ONNX: input "input" (N, C, H, W), output "logits" (N, K, H', W').

    H and W are symbolic, of the form min + step * k (the exporter proves the network legal for
    every such size), N is free; another size fails in onnxruntime (``OnnxUNet``). The file's
    metadata_props hold ``description`` as JSON under "unet_fast". It is one file, written once
    (``_write_onnx``), weights included: a model of more than 2 GiB of weights cannot be one, and is refused before
    the export begins (``check_onnx_size``).
    """
    output = check_output(output, "onnx")
    check_onnx_size(model, "export this model as torchscript instead")
    require("onnxscript", "ONNX export")
    standalone = standalone_model(model, OnnxUNet)
    config = model.config()
    step = geometry.size_step(config["depth"])
    smallest = geometry.min_input_size(config["depth"], config["padding"])
    height, width = torch.export.Dim("k_height"), torch.export.Dim("k_width")
    shapes = {"x": {0: torch.export.Dim("batch"), 2: step * height + smallest, 3: step * width + smallest}}
    with _quiet_onnx_exporter():
        program = torch.onnx.export(standalone, (example_input(model),), None, dynamo=True,
                                    input_names=["input"], output_names=["logits"], dynamic_shapes=shapes,
                                    opset_version=opset_version, verbose=False)
    _drop_debug_metadata(program.model)
    program.model.metadata_props[METADATA_KEY] = json.dumps(description(model))
    with new_file(output) as temporary:
        _write_onnx(program.model, temporary)
    return output


def _drop_debug_metadata(model) -> None:
    """Remove the exporter's debugging notes from every node (torch's stack traces, FX nodes, module scopes,
    onnxscript's rewrite rules): the stack traces name the exporting machine's absolute paths (its home folder,
    its virtual environment) in a file meant to be shared, and running the model needs none of them."""
    nodes = [*model.graph, *(node for function in model.functions.values() for node in function)]
    for node in nodes:
        node.metadata_props.clear()


#: protobuf, and so onnxruntime and onnx, parses no message (an ONNX file without external data) larger
PROTOBUF_LIMIT = 2 ** 31 - 1


def onnx_weight_bytes(model: torch.nn.Module) -> int:
    """The bytes of the weights an ONNX file of ``model`` holds: every tensor of its state_dict in float32, as the
    standalone U-Net it is made from holds them (``standalone_model``); read from the shapes only (a model on the
    meta device too)."""
    return sum(4 * tensor.numel() for tensor in model.state_dict().values())


def check_onnx_size(model: torch.nn.Module, fix: str) -> None:
    """A BadArgument naming ``model``, saying ``fix``, when its weights alone (``onnx_weight_bytes``) are more than
    an ONNX file can hold (``PROTOBUF_LIMIT``): refused before any work, where the ONNX step would fail after it.
    The graph beside the weights adds some kilobytes, which ``_write_onnx`` counts when it writes the file."""
    size = onnx_weight_bytes(model)
    if size > PROTOBUF_LIMIT:
        from .checks import BadArgument

        raise BadArgument("model", f"the model's weights are {size / 2 ** 30:.2f} GiB in float32 ({size:,} bytes), "
                                   f"over the 2 GiB a single ONNX file (a protobuf message) can hold: {fix}")


def _write_onnx(model, path: Path) -> None:
    """Write the ONNX IR ``model`` (the exporter's ``ONNXProgram.model``) as one ONNX file, each weight
    written from the memory that holds it.

    ``ONNXProgram.save`` (``onnx_ir.save``) builds the whole ModelProto, weights included, then serialises it:
    protobuf's encoder and the Python bytes are two more copies, three beside the model's own (exporting
    depth 6, base 64, 474 MiB of weights, peaked at 2.9 GB). It also moves the weights of a model of over
    1.5 GiB to an external data file, named after the temporary file, which a single .onnx cannot have. Here
    the ModelProto is serialised without its initializers, and each follows as one more ``graph`` field holding
    that initializer, its raw data written straight from the tensor: protobuf merges the occurrences of a
    message field, so the file parses as the very ModelProto ``onnx_ir.serde.serialize_model`` gives (the
    tests compare them)."""
    onnx = require("onnx", "ONNX export")
    ir = require("onnxscript", "ONNX export").ir        # the export extra's; named if it is missing

    def key(message, field: str, length: int) -> bytes:      # a length-delimited field's tag and length
        return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2) + _varint(length)

    values = [value for value in model.graph.initializers.values() if value.const_value is not None]
    tensors = [value.const_value for value in values]
    try:
        for value in values:             # stand-ins: the value_info of each initializer is kept, its data is not
            value.const_value = ir.Tensor(np.zeros(0, np.float32))
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in zip(values, tensors):
            value.const_value = tensor
    del proto.graph.initializer[:]
    pieces = [(proto.SerializeToString(), None)]      # (bytes, then the raw data of this tensor, or None)
    for value, tensor in zip(values, tensors):
        if isinstance(tensor, ir.Tensor) and not tensor.doc_string and not tensor.metadata_props:
            header = onnx.TensorProto(name=value.name, data_type=tensor.dtype.value, dims=tensor.shape.numpy())
            entry = header.SerializeToString() + key(onnx.TensorProto, "raw_data", tensor.nbytes)
            data, length = tensor, len(entry) + tensor.nbytes
        else:                            # another kind of tensor (none in a U-Net): serialised whole
            tensor.name = value.name
            entry, data = ir.serde.serialize_tensor(tensor).SerializeToString(), None
            length = len(entry)
        initializer = key(onnx.GraphProto, "initializer", length)
        pieces.append((key(onnx.ModelProto, "graph", len(initializer) + length) + initializer + entry, data))
    size = sum(len(head) + (0 if data is None else data.nbytes) for head, data in pieces)
    if size > PROTOBUF_LIMIT:
        raise ValueError(f"the ONNX file would be {size / 2 ** 30:.2f} GiB, over the 2 GiB a single ONNX file "
                         f"(a protobuf message) can hold: export this model as torchscript instead")
    with open(path, "wb") as file:
        for head, data in pieces:
            file.write(head)
            if data is not None:
                start = file.tell()
                if hasattr(data, "tofile"):                # no copy of a torch tensor (onnx_ir >= 0.1.11)
                    data.tofile(file)
                else:
                    file.write(data.tobytes())
                if file.tell() - start != data.nbytes:
                    raise RuntimeError(f"ONNX export: a {data.dtype} initializer of shape {data.shape} wrote "
                                       f"{file.tell() - start} bytes, not its {data.nbytes}")


def _varint(n: int) -> bytes:
    """``n`` >= 0 as a protobuf varint: 7 bits a byte, least significant first."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """Silence what the exporter says about torch's internals and about torchvision, which a U-Net never uses."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        exporter_log.setLevel(level)


def export_torchscript(model: torch.nn.Module, output) -> Path:
    """Write ``model`` as TorchScript (torch.jit.load runs it; any batch and legal size). The file holds
    ``description`` as JSON in the extra file "unet_fast.json" (``torch.jit.load(path, _extra_files=...)``)."""
    output = check_output(output, "torchscript")
    with warnings.catch_warnings():
        # the bioimage.io format is TorchScript itself, so torch's advice to move on does not apply
        warnings.filterwarnings("ignore", message=".*torch.jit.(script|save).*deprecated", category=DeprecationWarning)
        scripted = torch.jit.script(standalone_model(model))
        with new_file(output) as temporary:
            torch.jit.save(scripted, str(temporary), _extra_files={METADATA_FILE: json.dumps(description(model))})
    return output


def export(model: torch.nn.Module, output, format: str, *, ignore_scale: bool = False,
           **bioimageio_options) -> Path:
    """Write ``model`` to ``output`` as "bioimageio" (a .zip package), "onnx" or "torchscript" (.pt).

    bioimageio_options go to ``unet_fast.bioimageio_package.export_bioimageio`` (test_image, name,
    authors, ...); the other formats take none. A model that resamples its images (``input_scale`` !=
    1: see ``unet_fast.rescale``) is refused unless ``ignore_scale``: none of these formats can say so,
    and the tools that run them would feed it images at the wrong scale.
    """
    check_output(output, format)
    scale = getattr(model, "input_scale", 1.0)
    if scale != 1.0 and not ignore_scale:
        from .checks import BadArgument

        raise BadArgument("model", f"the model resamples images by {scale:.4g} before the network (its training "
                                   f"brought the objects to the recipe's size), which {format} files cannot "
                                   f"record: the tools running it would see images at the wrong scale. Export "
                                   f"anyway with --ignore-scale (ignore_scale=True) and resample images by "
                                   f"{scale:.4g} before giving them to it, or train with --object-size 0")
    if format == "bioimageio":
        from .bioimageio_package import export_bioimageio

        return export_bioimageio(model, output, **bioimageio_options)
    if bioimageio_options:
        raise TypeError(f"format {format!r} takes no options, got {sorted(bioimageio_options)}")
    return export_onnx(model, output) if format == "onnx" else export_torchscript(model, output)
