"""Checks of what users hand in, shared by the Python API and the command line, run before any work.

``BadArgument`` is a ValueError that knows which argument was wrong (its keyword name), so
``unet-fast`` can name the flag and exit with the usage status. The path checks exist because an
output must never replace a user's input, and because a path that cannot be written should fail
in the first second, not after an hour of training.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path

import numpy as np


class BadArgument(ValueError):
    """An argument's value cannot work; ``argument`` is its keyword name (e.g. "output_dir"), which the
    message starts with; ``detail`` is the message without it (the command line names the flag instead)."""

    def __init__(self, argument: str, message: str):
        super().__init__(message if message.startswith(argument) else f"{argument}: {message}")
        self.argument = argument
        self.detail = message


def existing_ancestor(path: Path) -> Path:
    """``path`` or the nearest folder above it that exists (what a path yet to be made is made in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


#: suffixes of files, never of a folder an output is written into (.zarr, a folder format, is not one of them)
FILE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy", ".npz", ".csv", ".json",
                           ".safetensors", ".pt", ".pth", ".onnx", ".zip", ".h5", ".czi", ".nd2", ".lif"})


def check_writable_folder(path, argument: str = "output_dir") -> Path:
    """``path`` is a folder that can be written, or can be created (nothing is created here)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadArgument(argument, f"{str(path)!r} is a file, not a folder")
    if not path.exists() and path.suffix.lower() in FILE_SUFFIXES:     # `-o out.tif` made a folder of that name
        raise BadArgument(argument, f"{str(path)!r} is a file's name ({path.suffix}), but a folder goes here "
                                    f"(one of that name would be made): name a folder, e.g. "
                                    f"{str(path.with_suffix(''))!r}")
    where = existing_ancestor(path)
    if not where.is_dir():
        raise BadArgument(argument, f"{str(path)!r} cannot be created: {str(where)!r} is a file, not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise BadArgument(argument, f"{str(path)!r}: no permission to write in {str(where)!r}")
    return path


def check_writable_file(path, argument: str = "output") -> Path:
    """``path`` can be written as a file: it is not a folder, and its folder is (or can be made) writable."""
    path = Path(path)
    if path.is_dir():
        raise BadArgument(argument, f"{str(path)!r} is a folder; name a file in it")
    check_writable_folder(path.parent if str(path.parent) else Path("."), argument)
    return path


def same_file(a, b) -> bool:
    """True when ``a`` and ``b`` are one file (or folder) on disk: equal paths, symlinks to it, hard links."""
    try:
        return os.path.samefile(a, b)
    except OSError:   # one of them does not exist
        return False


def overlapping(output, source) -> bool:
    """True when writing ``output`` (a file, or a folder replaced as a whole such as a .zarr) would touch
    ``source``: the same file, or ``source`` inside the folder ``output``."""
    if same_file(output, source):
        return True
    output = Path(os.path.realpath(output))
    source = Path(os.path.realpath(source))
    return output == source or output in source.parents     # (equal paths of what does not exist yet too)


def check_output_is_not_an_input(output, inputs, argument: str, what: str = "input") -> None:
    """BadArgument when ``output`` is, or would replace, one of ``inputs`` (paths)."""
    for source in inputs:
        if overlapping(output, source):
            detail = "" if Path(output) == Path(source) else f" (it resolves to {str(source)!r})"
            raise BadArgument(argument, f"the output {str(output)!r} would overwrite the {what} "
                                        f"{str(source)!r}{detail}; choose another output")


def check_device(device, argument: str = "device") -> torch.device | None:
    """A device string or torch.device that exists here (None stays None)."""
    import torch     # here: the command line imports this module before its slow imports

    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise BadArgument(argument, f"{device!r} is not a device ({error}); use cpu, cuda or cuda:K") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise BadArgument(argument, f"{device!r}: CUDA is not available ({why}); use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise BadArgument(argument, f"{device!r}: there are {torch.cuda.device_count()} CUDA device(s), "
                                        f"numbered from 0")
    return parsed


def check_bool(value, argument: str) -> None:
    """A switch must be True or False: a string such as "no" would otherwise count as True."""
    if not isinstance(value, bool):
        raise BadArgument(argument, f"{argument} must be True or False, got {value!r}")


def check_positive_int(value, argument: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadArgument(argument, f"{argument} must be a positive integer{' or None' if allow_none else ''}, "
                                    f"got {value!r}")


def pixel_type_problem(dtype) -> str | None:
    """Why pixels of ``dtype`` cannot be segmented or trained on (complex would lose its imaginary part;
    objects and records are no numbers), or None for bool, integer and float pixels."""
    dtype = np.dtype(dtype)
    if dtype.kind in "biuf":
        return None
    return (f"has pixels of type {dtype}; unet_fast segments real numbers (bool, integer or float): convert "
            f"the image first (for complex data, e.g. its magnitude, np.abs)")


#: set (not "0") for tracebacks: unet-fast --debug sets it while its command runs
DEBUG_ENVIRONMENT = "UNET_FAST_DEBUG"


#: the median share of their bounding boxes below which a label image's "objects" look scattered, not cells (a
#: disc fills 79 %, a thin diagonal rod of 10 x 1 px 10 %; the grey values of the real nuclei image 0.2 %)
SCATTERED_FILL = 0.05


def scattered_objects(area: np.ndarray, box_area: np.ndarray, least: int = 10) -> str | None:
    """Why instance labels of these objects (pixels and bounding-box pixels of each) look like an intensity image:
    each value scattered over the image, as grey values are, not one blob each; or None. An image given for its
    labels (measure's -i, or train's and evaluate's --images and --labels swapped) cannot be told from another
    tool's instance labels by its pixel type alone."""
    if area.size < least:
        return None
    fill = float(np.median(area / box_area))
    if fill >= SCATTERED_FILL:
        return None
    return (f"its {area.size} 'objects' fill a median {100 * fill:.1f} % of their bounding boxes (a cell fills "
            f"most of its box): each value lies scattered over the image, as the grey values of an intensity image "
            f"do")


def scattered_label_image(labels: np.ndarray, least: int = 10) -> str | None:
    """``scattered_objects`` of a label image of integer ids >= 0 (0 background)."""
    if labels.dtype.kind not in "iub" or labels.size == 0 or int(labels.max()) > 2 ** 24:
        return None                 # ids that large are no grey values of 8 or 16 bits
    boxes = [(index, box) for index, box in enumerate(_find_objects(labels), 1) if box is not None]
    if len(boxes) < least:
        return None
    area = np.bincount(labels.ravel().astype(np.intp, copy=False))[[index for index, _ in boxes]]
    box_area = np.array([(rows.stop - rows.start) * (cols.stop - cols.start) for _, (rows, cols) in boxes])
    return scattered_objects(area, box_area, least)


def _find_objects(labels: np.ndarray):
    from scipy import ndimage

    return ndimage.find_objects(labels if labels.dtype.kind != "b" else labels.view(np.uint8))


def debugging() -> bool:
    return os.environ.get(DEBUG_ENVIRONMENT, "") not in ("", "0")


def failure_reason(error: BaseException, path=None) -> str:
    """The line a FAILED report gives for ``error``: its message on one line, without ``path`` where the message
    starts with it (the report names the file first). A plain ValueError or an OSError (which says its errno) says
    what it means without its type; other types keep their name (NonFiniteInputError, TiffFileError, zlib.error:
    an error's type is part of what it says)."""
    text = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip()) or type(error).__name__
    if path is not None and text.startswith(str(path)):
        text = text[len(str(path)):].lstrip(": ") or type(error).__name__
    if not (type(error) is ValueError or isinstance(error, OSError)):
        kind = type(error).__name__
        text = f"{type(error).__module__ + '.' if kind == 'error' else ''}{kind}: {text}"     # zlib.error
    if debugging():             # --debug: the FAILED line followed by Python's traceback
        import traceback

        text += "\n" + "".join(traceback.format_exception(error)).rstrip()
    return text


# ---- errors as usage errors (the command line's one line each)

def one_line(error: BaseException, text: str | None = None) -> str:
    """The command line's line for ``error`` (``text``: its message, where not str(error)): the first line of it,
    counting the others (--debug shows them); the type named where it is no usage error's (OSError, ValueError,
    TypeError)."""
    text = (str(error) if text is None else text).strip() or type(error).__name__
    if isinstance(error, KeyError):
        text = f"missing {text}"
    lines = text.splitlines()
    if len(lines) > 1:
        text = f"{lines[0]} (and {len(lines) - 1} more lines: --debug shows them)"
    if not isinstance(error, (OSError, ValueError, TypeError, BadArgument)):
        text = f"{type(error).__name__}: {text}"
    return text


@contextlib.contextmanager
def blame(argument: str | None):
    """Errors inside are the named argument's fault (a usage error), e.g. a checkpoint that cannot be read."""
    try:
        yield
    except BadArgument:
        raise
    except (OSError, ValueError, TypeError, KeyError, pickle.UnpicklingError) as error:
        if argument is None:
            raise
        raise BadArgument(argument, one_line(error)) from error


@contextlib.contextmanager
def blame_config():
    """Architecture errors name their argument first ("depth must be ..."): blame that one."""
    try:
        yield
    except BadArgument:
        raise
    except ValueError as error:
        text = str(error)
        names = ("in_channels", "num_classes", "depth", "base_channels", "padding", "dropout")
        found = sorted((text.find(name), name) for name in names if name in text)
        raise BadArgument(found[0][1] if found else "depth", text) from error
