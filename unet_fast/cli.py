"""The unet-fast command line.

Every user mistake gets one line naming the argument and what to do (exit status 2); a failure while
working gets one line saying what failed (exit status 1); a traceback only with --debug (or
UNET_FAST_DEBUG=1). Arguments are checked before any work: nothing is trained or read that would be
lost to a wrong output path.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

# The commands import what they need where they need it; the package itself (unet_fast/__init__)
# imports torch and registers the ops before main() runs, so a Ctrl-C in that first second is Python's
from . import checks, termination
from .checks import DEBUG_ENVIRONMENT, BadArgument, blame, one_line
from .train_command import cmd_train


def cmd_info(args) -> int:
    from . import info

    report = info()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        if key == "backends":
            print("backends:")
            for name, entry in value.items():
                mark = "yes" if entry["available"] else "no "
                print(f"  {name:15s} {mark}  {entry['why']}")
        elif key == "devices":
            print(f"devices: {', '.join(value)}")
        elif key == "ops":
            print("ops (implementation run by default):")
            for device, chosen in value.items():
                print(f"  {device:15s} " + ", ".join(f"{op} {implementation}" for op, implementation in chosen.items()))
        else:
            print(f"{key}: {value}")
    return 0


def cmd_sizes(args) -> int:
    from . import geometry

    first = geometry.min_input_size(args.depth, args.padding)
    sizes = range(first, args.max_size + 1, geometry.size_step(args.depth))   # a range: any --max-size is cheap
    if not sizes:
        print(f"no legal input size up to {args.max_size} for depth {args.depth}; the smallest is "
              f"{geometry.min_input_size(args.depth, args.padding)}", file=sys.stderr)
        return 1
    print(f"depth {args.depth}, {args.padding} padding: legal sizes every {geometry.size_step(args.depth)} px, "
          f"context {geometry.context(args.depth, args.padding)} px per side")
    print(f"{'input':>7} {'output':>7} {'useful px':>10}  (output pixels / input pixels)")
    for n in sizes:
        out = geometry.output_size(n, args.depth, args.padding)
        print(f"{n:7d} {out:7d} {out * out / (n * n):10.3f}")
    return 0


def cmd_demo(args) -> int:
    from . import demo
    from .checks import check_device, check_writable_folder

    check_writable_folder(args.output, "output")
    check_device(args.device)
    result = demo.run(args.output, quick=args.quick, seed=args.seed, epochs=args.epochs, device=args.device,
                      threads=args.threads or None, progress=False if args.no_progress else None)
    if args.quick:
        return 0
    short = [f"{name} {value:.3f} is below the demo's target of {demo.TARGETS[key]}"
             for key, name, value in (("iou", "foreground IoU", result.iou), ("object_f1", "object F1", result.object_f1))
             if value < demo.TARGETS[key]]
    for line in short:
        print(line, file=sys.stderr)
    return 1 if short else 0


def cmd_segment(args) -> int:
    from . import segment

    if (args.num_parts is None) != (args.part_id is None):
        args.parser.error("--num-parts and --part-id go together")
    num_parts, part_id = (args.num_parts, args.part_id) if args.num_parts is not None else (1, 0)
    segment.check_parts(num_parts, part_id)     # BadArgument: one line naming --num-parts or --part-id
    options = _instance_options(args)
    if options is not None and args.output != "instances":
        raise BadArgument("output", "--min-size, --no-fill-holes, --border, --threshold, --smoothing, --split and "
                                    "--no-split go with --output instances")
    if args.overlay and args.output == "probabilities":
        raise BadArgument("overlay", "--overlay outlines labels or instances, not probabilities")
    from .model_file import load_model
    from .torchrun import job_size

    # the arguments first (an output folder that cannot be written, a device that is not there), then the
    # model: a model file that cannot be used is a wrong -m, whatever process of a torchrun job finds it
    segment.check_arguments(args.output_dir, output=args.output, format=args.format, tile_size=args.tile_size,
                            batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                            max_pixels=args.max_pixels, nonfinite=args.nonfinite)
    if job_size() > 1:      # every rank reads it once the ranks have met (segment.run), where one rank that cannot
        model = args.model  # (a path missing on one node) stops them all; read here, it left the others waiting
    else:
        with blame("model"):
            model = load_model(args.model)
    if args.output == "instances" and not isinstance(model, str) and model.num_classes != 2:
        raise BadArgument("output", f"--output instances needs a model of 2 classes (background, foreground); "
                                    f"{args.model} has {model.num_classes}: use --output labels (a class per pixel)")
    result = segment.run(args.input, args.output_dir, model, output=args.output, format=args.format,
                         tile_size=args.tile_size, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                         resume=args.resume, num_parts=num_parts, part_id=part_id, max_pixels=args.max_pixels,
                         nonfinite=args.nonfinite, progress=False if args.no_progress else None,
                         instance_options=options, overlay=args.overlay, tta=args.tta, scale=args.scale,
                         recursive=args.recursive)
    return result.exit_status


def cmd_measure(args) -> int:
    import logging

    from . import measure

    def log(line: str, file=None) -> None:       # FAILED lines (to stderr) always; a line per file unless asked not
        if file is not None or not args.no_progress:
            print(line, file=file or sys.stdout)

    # tifffile logs what it finds wrong in a damaged file, once each time it is opened (a few times here): the
    # file's FAILED line says what matters, once
    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        result = measure.run(args.input, args.output_dir, images=args.images, label_suffix=args.label_suffix,
                             recursive=args.recursive, max_pixels=args.max_pixels, log=log)
    finally:
        quiet.setLevel(level)
    if result.written:
        print(f"measured {len(result.measured)} file(s): {result.objects} objects in {result.seconds:.1f} s"
              + (f", {len(result.failed)} failed" if result.failed else "")
              + f"; wrote {' and '.join(map(str, result.written))}")
    return result.exit_status


def cmd_export(args) -> int:
    from . import load_model
    from .export import check_output, export

    package_options = {"test_image": args.test_image, "name": args.name, "author": args.author,
                       "license": args.license, "description": args.description}
    with blame("output"):
        check_output(args.output, args.format)          # before the model is read: fail fast
    given = [name for name, value in package_options.items() if value is not None]
    if args.format != "bioimageio" and given:
        raise BadArgument(given[0], f"an option of --format bioimageio only; drop it for --format {args.format}")
    with blame("test_image"):
        test_image = _read_test_image(args.test_image) if args.test_image else None
    options = {} if args.format != "bioimageio" else dict(
        test_image=test_image, name=args.name, authors=args.author, license=args.license or "CC-BY-4.0",
        description=args.description)
    with blame("model"):
        model = load_model(args.model)
    # failure: exit 1, but for a test image that does not fit the model (a usage error of --test-image)
    written = export(model, args.output, args.format, ignore_scale=args.ignore_scale, **options)
    synthetic = args.format == "bioimageio" and not args.test_image
    print(f"wrote {written}" + ("; its test image is synthetic nuclei: pass --test-image with an image of your "
                                "data to show what the model is for" if synthetic else ""))
    return 0


def _read_test_image(path):
    from .image_io import read_image

    image, info = read_image(path, lazy=False)
    if info.axes not in ("YX", "CYX"):
        raise ValueError(f"--test-image {path}: need a 2-D image (axes YX or CYX), got axes {info.axes!r} "
                         f"(shape {info.shape}); save one plane of it")
    return image


def _integer(smallest: int, largest: int | None = None):
    """An argparse type: an integer in [smallest, largest]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < smallest or (largest is not None and value > largest):
            bound = f">= {smallest}" if largest is None else f"in [{smallest}, {largest}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text!r}")
        return value
    return parse


_positive_int = _integer(1)
_non_negative_int = _integer(0)


def _depth(text: str) -> int:
    from .geometry import MAX_DEPTH

    return _integer(1, MAX_DEPTH)(text)

_seed = _integer(0, 2 ** 63 - 1)


def _number(low: float, high: float, low_open: bool = False, high_open: bool = True):
    """An argparse type: a finite float in the interval (bounds open or closed as asked)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not ((low < value if low_open else low <= value) and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"must be a number in {'(' if low_open else '['}{low:g}, {high:g}"
                                             f"{')' if high_open else ']'}, got {text!r}")
        return value
    return parse


_fraction = _number(0.0, 1.0)                 # [0, 1)
_positive_float = _number(0.0, float("inf"), low_open=True)
_non_negative_float = _number(0.0, float("inf"))
# bounds far beyond any use, so that a slip (1e308, 100000) is a usage error, not an overflow, a crash or a
# fork bomb after the data were read
_minutes = _number(0.0, 1e7, low_open=True)                 # 19 years
_learning_rate = _number(0.0, 1e3, low_open=True)
_weight = _number(0.0, 1e6)                                   # w0, --dice, --weight-decay, --noise
_pixels = _number(0.0, 1e5)                                   # --object-size, --elastic
_threads = _integer(1, 1024)                                  # torch.set_num_threads(100000) crashed
_workers = _integer(0, 256)
_tile = _integer(1, 16384)
_probability = _number(0.0, 1.0, low_open=True)    # (0, 1)


_LIST_BYTES = 64 * 2**20      # the largest @FILE list of arguments read (a million paths of 60 characters fit)


class _Parser(argparse.ArgumentParser):
    """argparse's errors in one line (its usage block buries them), exit status 2 as argparse's."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _read_args_from_files(self, arg_strings):
        """argparse's @FILE (where ``fromfile_prefix_chars`` allows it), with errors that name the file (argparse
        raised UnicodeDecodeError for a binary file): each line of FILE is one argument, spaces inside kept, those
        around it dropped (an editor's or a spreadsheet's trailing blanks, a Windows CR), blank lines and lines
        starting with # none, a UTF-8 byte order mark (Windows Notepad's) ignored, taken as written (an @ there is
        no further list; a relative path is relative to the current folder, as typed on the command line, not to
        FILE's). A list that gives no argument is an error naming it. A list given to -i/--input holds inputs
        only: a line starting with - is a file name (./-name), not an option that would end the inputs."""
        expanded, option = [], None
        for argument in arg_strings:
            if not argument or argument[0] not in (self.fromfile_prefix_chars or ""):
                if argument.startswith("-"):
                    option = argument
                expanded.append(argument)
                continue
            try:
                with open(argument[1:], "rb") as listed:
                    data = listed.read(_LIST_BYTES + 1)     # /dev/zero or a huge file: refused, not read whole
                if len(data) > _LIST_BYTES:
                    raise OSError(0, f"over {_LIST_BYTES // 2**20} MiB")
                text = data.decode("utf-8-sig")
            except (OSError, UnicodeDecodeError) as error:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else error
                self.error(f"{argument}: cannot read the list {argument[1:]!r} ({reason}); @FILE stands for a text "
                           f"file of arguments, one per line (a file whose name starts with @: ./@name)")
            lines = [line.strip() for line in text.splitlines()]
            lines = [line for line in lines if line and not line.startswith("#")]
            if not lines:
                self.error(f"{argument}: the list {argument[1:]!r} gives no argument (blank, or only # comments)")
            if option in ("-i", "--input"):
                lines = [os.path.join(".", line) if line.startswith("-") else line for line in lines]
            expanded.extend(lines)
        return expanded


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the help already says it); descriptions keep
    their paragraphs."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(super(_HelpFormatter, self)._fill_text(part, width, indent) for part in text.split("\n\n"))

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or action.required or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return f"{text} (default: {action.default})"


#: how the help shows a recipe value of None
_RECIPE_NONE = {"tiles_per_epoch": "about one pass over the images' pixels"}


def _recipe_default(name: str) -> str:
    """'default: from --recipe: ...', the value of each recipe for the train flag of the field ``name``."""
    from .recipes import RECIPES

    def shown(value):
        if value is None:
            return _RECIPE_NONE.get(name, "none")
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, tuple):
            return " ".join(shown(v) for v in value)
        return str(value)

    values = {recipe_name: shown(getattr(recipe, name)) for recipe_name, recipe in RECIPES.items()}
    if len(set(values.values())) == 1:
        return f"default: from --recipe, {next(iter(values.values()))} in each"
    return "default: from --recipe: " + ", ".join(f"{recipe_name} {value}" for recipe_name, value in values.items())


def _instance_options(args):
    """An InstanceOptions from --min-size, --no-fill-holes, --border, --threshold, --smoothing, --split,
    --no-split; None when none was given."""
    from .instance_options import InstanceOptions

    given = {key: value for key, value in (("min_size", args.min_size), ("border", args.border),
                                           ("fill_holes", False if args.no_fill_holes else None),
                                           ("threshold", args.threshold), ("smoothing", args.smoothing),
                                           ("split", args.split)) if value is not None}
    if args.no_split:
        if args.split is not None:
            args.parser.error("--split and --no-split exclude each other")
        given["split"] = None
    try:
        return InstanceOptions(**given) if given else None
    except ValueError as error:     # its message starts with the field at fault
        named = str(error).split(" ", 1)[0]
        if named == "split" and "split" not in given:     # --threshold at or above the default --split
            raise BadArgument("threshold", f"--threshold {args.threshold:g} is at or above the default --split "
                                           f"{InstanceOptions().split:g} (objects are split at cores of "
                                           f"probability above it, which must be above the threshold); give a "
                                           f"--split above {args.threshold:g}, or --no-split") from error
        if named == "split" and "threshold" in given:
            raise BadArgument("split", f"--split {args.split:g} must be above --threshold {args.threshold:g} "
                                       f"(and below 1); give a larger --split, a smaller --threshold, or --no-split"
                              ) from error
        raise BadArgument(named if named in given else "min_size/border/threshold/smoothing/split", str(error)
                          ) from error


def cmd_evaluate(args) -> int:
    from . import evaluation
    from .checks import check_device, check_writable_folder
    from .image_io import write_bytes_atomically
    from .instances import InstanceOptions
    from .model_file import load_model
    from .rescale import model_scale
    from .segment import check_tiles

    # everything is checked before the first image is scored: the folders, the options, the model, every
    # pair of files (names, sizes, label values) and every output against the inputs
    output_dir = Path(args.output_dir)
    check_writable_folder(output_dir, "output_dir")
    if args.overlay:
        check_writable_folder(output_dir / "overlays", "output_dir")
    check_device(args.device)
    for name in ("images", "labels"):
        if not Path(getattr(args, name)).exists():
            raise BadArgument(name, f"{getattr(args, name)!r}: no such file or folder")
    evaluation.check_outputs(args.images, args.labels, [output_dir / "evaluation.csv"], "output_dir")
    if (output_dir / "evaluation.csv").exists() and not _written_by_evaluate(output_dir / "evaluation.csv"):
        raise BadArgument("output_dir", f"{str(output_dir / 'evaluation.csv')!r} exists and is no table unet-fast "
                                        f"evaluate wrote, which this run would replace; choose another output folder "
                                        f"or move that file")
    options = _instance_options(args) or InstanceOptions()
    with blame("model"):
        model = load_model(args.model, device=args.device or "cpu")
    if model.num_classes != 2:
        raise BadArgument("model", f"evaluate needs a model of 2 classes (background, foreground); {args.model} "
                                   f"has {model.num_classes}")
    check_tiles(model, args.tile_size, args.batch_size, args.device or "cpu", args.dtype)
    try:
        result = evaluation.evaluate_model(
            model, args.images, args.labels, label_suffix=args.label_suffix, instance_options=options,
            tile_size=args.tile_size, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
            overlay_dir=output_dir / "overlays" if args.overlay else None, nonfinite=args.nonfinite, tta=args.tta,
            scale=args.scale, ignore_label=args.ignore_label,
            log=None if args.no_progress else lambda line: print(line, file=sys.stderr))
    except BadArgument as error:
        if error.argument == "overlay_dir":         # OUTDIR/overlays: -o's
            raise BadArgument("output_dir", error.detail) from error
        raise
    csv_path = write_bytes_atomically(output_dir / "evaluation.csv", result.csv().encode())
    print(f"{args.model} on {len(result.images)} image(s); objects: foreground probability"
          + (f" smoothed (Gaussian of {options.smoothing:g} px)" if options.smoothing else "")
          + f" above {options.threshold:g}" + (f", split at cores above {options.split:g}" if options.split else "")
          + f", min size {options.min_size} px, holes {'filled' if options.fill_holes else 'kept'}, "
          f"borders {options.border} px"
          + f"; images resampled by {model_scale(model, args.scale):g}"
          + ("; test-time augmentation" if args.tta else ""))
    print(result.summary())
    print(f"wrote {csv_path}" + (f" and overlays in {output_dir / 'overlays'} (yellow: predicted, cyan: true"
                                 + ("; hatched in magenta: not annotated" if args.ignore_label is not None else "")
                                 + ")" if args.overlay else ""))
    return 0


def _written_by_evaluate(path: Path) -> bool:
    """Whether ``path`` starts as the evaluation.csv that evaluate writes: its name and score columns, through
    rand_error (a table of the user's own with name and iou columns is no evaluate table)."""
    from .evaluation import COLUMNS

    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().startswith(",".join(COLUMNS[:COLUMNS.index("rand_error") + 1]) + ",")
    except (OSError, UnicodeDecodeError):
        return False


def build_parser() -> argparse.ArgumentParser:
    from . import geometry

    parser = _Parser(prog="unet-fast", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help=f"show Python tracebacks of errors (also: {DEBUG_ENVIRONMENT}=1)")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=f"show Python tracebacks of errors (also: {DEBUG_ENVIRONMENT}=1; default: off)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, **kwargs):
        p = sub.add_parser(name, parents=[common], formatter_class=_HelpFormatter, **kwargs)
        p.set_defaults(parser=p)
        return p

    p = command("info", help="versions, devices, available backends")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_info)

    p = command("sizes", help="table of legal input sizes and their output sizes")
    p.add_argument("--depth", type=_depth, default=5, help=f"resolution levels, 1 to {geometry.MAX_DEPTH}")
    p.add_argument("--padding", choices=geometry.PADDINGS, default="valid", help="3x3 convolution padding")
    p.add_argument("--max-size", type=_positive_int, default=1024, help="largest input size listed")
    p.set_defaults(func=cmd_sizes)

    p = command("train", help="train a U-Net on labelled images (a fast recipe by default, or the paper's)",
                description="Train on labelled images by a recipe: 'default' (a small U-Net, Adam with warm-up "
                            "and cosine decay, batches of 140 px tiles, 90-degree rotations, flips, mild "
                            "elastic deformation and grey values: minutes on a CPU) or 'paper' (SGD with "
                            "momentum 0.99, batch 1, large tiles, the paper's network and augmentation). Every "
                            "recipe value has its own flag; unset flags keep the recipe's. Saves a model file "
                            "for `unet-fast segment` and `evaluate`. Under torchrun it trains data-parallel.\n\n"
                            "Writes: OUTPUT (the model, .safetensors), and in the work folder (default: OUTPUT "
                            "without its suffix) last.safetensors (the checkpoint --resume reads, every epoch), "
                            "best.safetensors (with validation), history.csv, history.json, curves.png and "
                            "training-images.json (the images and split --resume must find again).")
    p.add_argument("--images", required=True, help="folder of images (TIFF/PNG), or a multi-page TIFF stack")
    p.add_argument("--labels", required=True, help="folder of label images matched by base name, or a label stack")
    p.add_argument("-o", "--output", required=True, help="model file to write (must end in .safetensors)")
    p.add_argument("--recipe", choices=("default", "paper"), default=None,
                   help="the values of every flag below left unset (default: default, or on --resume the run's; "
                        "see unet_fast.recipes)")
    g = p.add_argument_group("length and validation")
    g.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"epochs to train, unless --time-limit ends it first ({_recipe_default('epochs')})")
    g.add_argument("--tiles-per-epoch", type=_positive_int, default=None,
                   help=f"training tiles in an epoch ({_recipe_default('tiles_per_epoch')})")
    g.add_argument("--time-limit", type=_minutes, default=None, metavar="MINUTES",
                   help="stop at the first step past this wall-clock budget (resumes included), saving the model; "
                 "the learning-rate schedule then anneals within it (default: no limit)")
    g.add_argument("--val-images", default=None, help="validation images (folder or stack), scored every epoch (default: none)")
    g.add_argument("--val-labels", default=None, help="their labels (default: none)")
    g.add_argument("--val-fraction", type=_fraction, default=0.0,
                   help="or: share of the training images held out for validation")
    g.add_argument("--best-metric", choices=("f1", "iou", "loss"), default=None,
                   help="with validation, the work dir's best.safetensors is the best model by this (default f1: "
                 "object F1 at IoU 0.5)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                   help=f"sgd (with --momentum), adam or adamw ({_recipe_default('optimizer')})")
    g.add_argument("--lr", type=_learning_rate, default=None,
                   help=f"peak learning rate ({_recipe_default('lr')})")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None,
                   help=f"after the warm-up: constant, or cosine from --lr down to 0 over the run (its steps or "
                        f"--time-limit) ({_recipe_default('lr_schedule')})")
    g.add_argument("--warmup", dest="warmup_steps", type=_non_negative_int, default=None, metavar="STEPS",
                   help=f"steps of a linear warm-up to --lr ({_recipe_default('warmup_steps')})")
    g.add_argument("--momentum", type=_fraction, default=None,
                   help=f"SGD's momentum, Adam's beta1 ({_recipe_default('momentum')})")
    g.add_argument("--weight-decay", type=_weight, default=None,
                   help=f"weight decay (adamw: decoupled) ({_recipe_default('weight_decay')})")
    g.add_argument("--tile-size", type=_tile, default=None,
                   help="input tile size (legal for the net); default: the recipe's (for another depth, the "
                        "smallest tile with as large an output; paper: the largest up to 572 that fits the images)")
    g.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"tiles per training step ({_recipe_default('batch_size')})")
    g = p.add_argument_group("augmentation")
    g.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                   help=f"random horizontal and vertical flips ({_recipe_default('flips')})")
    g.add_argument("--rotation", choices=("90", "any", "none"), default=None,
                   help=f"90: by multiples of 90 degrees (exact); any: by any angle (interpolated) "
                        f"({_recipe_default('rotation')})")
    g.add_argument("--zoom", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help=f"random magnification, drawn log-uniformly from LOW to HIGH (within 1/8 and 8) per tile: "
                        f"objects of other sizes (1 1: off) ({_recipe_default('zoom')})")
    g.add_argument("--elastic", dest="elastic_sigma", type=_pixels, default=None, metavar="PX",
                   help=f"elastic deformation: std of the 3x3 lattice's displacements (0: off) "
                        f"({_recipe_default('elastic_sigma')})")
    g.add_argument("--grey-values", action=argparse.BooleanOptionalAction, default=None,
                   help=f"random gamma, contrast and brightness ({_recipe_default('grey_values')})")
    g.add_argument("--gamma", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help=f"the grey values' range of gamma ({_recipe_default('gamma')})")
    g.add_argument("--imaging", action=argparse.BooleanOptionalAction, default=None,
                   help=f"what another microscope changes: random blur (sigma 0.5-1.5 px), uneven illumination "
                        f"(a ramp of up to 0.5 across the tile) and noise (std up to 0.1), each on a fifth of the tiles "
                        f"({_recipe_default('imaging')})")
    g.add_argument("--noise", type=_weight, default=None,
                   help=f"std of Gaussian noise added to every tile, in normalised units ({_recipe_default('noise')})")
    g.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    g = p.add_argument_group("network, inputs and targets")
    g.add_argument("--depth", type=_depth, default=None,
                   help=f"resolution levels, 1 to {geometry.MAX_DEPTH} ({_recipe_default('depth')})")
    g.add_argument("--base-channels", type=_positive_int, default=None,
                   help=f"channels of the first level, doubled at each level below ({_recipe_default('base_channels')})")
    g.add_argument("--padding", choices=geometry.PADDINGS, default=None,
                   help=f"3x3 convolution padding ({_recipe_default('padding')})")
    g.add_argument("--dropout", type=_fraction, default=None,
                   help=f"at the end of the contracting path ({_recipe_default('dropout')})")
    g.add_argument("--num-classes", type=_positive_int, default=None,
                   help="output classes, at least 2 (a binary mask is 2: background and foreground) (default: 2, "
                        "or on --resume the run's)")
    g.add_argument("--label-kind", choices=("auto", "instance", "semantic"), default="auto",
                   help="auto: >2 distinct values, or 2 without a 0 = instances, else a binary mask (see "
                        "unet_fast.data)")
    g.add_argument("--label-suffix", default="",
                   help="label files are named <image base name><suffix>.* (default: no suffix)")
    g.add_argument("--ignore-label", type=int, default=None, metavar="V",
                   help="pixels of label value V were not annotated (sparse labels: cells nobody outlined): they "
                        "count in no loss, no class balance and no validation score; V is no object and no "
                        "class (e.g. 255, or -1 in a signed image) (default: every pixel is annotated)")
    g.add_argument("--percentiles", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help=f"inputs: (x - P_LOW) / (P_HIGH - P_LOW) with the image's percentiles (stored with the "
                        f"model) ({_recipe_default('percentiles')})")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help=f"inputs: clipped to [0, 1] after the percentiles ({_recipe_default('clip')})")
    g.add_argument("--object-size", type=_pixels, default=None, metavar="PX",
                   help=f"inputs: when the labels' median object diameter is not within 1.25x of PX, every image "
                        f"is resampled to bring it to PX, in training and, by the factor stored with the model, "
                        f"in segment and evaluate; 0: never ({_recipe_default('object_size')})")
    g.add_argument("--w0", type=_weight, default=None,
                   help=f"weight-map border weight ({_recipe_default('w0')})")
    g.add_argument("--sigma", type=_number(0.0, 1e5, low_open=True), default=None,
                   help=f"weight-map border width in pixels ({_recipe_default('sigma')})")
    g.add_argument("--class-weights", choices=("balanced", "none"), default=None,
                   help=f"weight-map class balancing ({_recipe_default('class_weights')})")
    g.add_argument("--dice", type=_weight, default=None, metavar="WEIGHT",
                   help=f"loss: the weighted cross-entropy plus WEIGHT x a soft Dice loss of the foreground "
                        f"(0: cross-entropy alone) ({_recipe_default('dice')})")
    g = p.add_argument_group("running")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:K (default: cuda if available)")
    g.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--amp", action="store_true",
                   help="bf16 autocast: faster on GPUs, and on CPUs with AVX-512 BF16 or AMX (the default recipe "
                        "trained in 1.6x less CPU time, scoring as well); a warning says when a CPU has no bf16 "
                        "kernels (default: off, fp32)")
    g.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue the run of a checkpoint (last.safetensors): its network, recipe, tile size, "
                        "seed, --amp, --best-metric, --ignore-label and images; a flag given with another value "
                        "is refused, but --epochs may extend the run "
                        "(default: start afresh; a work dir holding a checkpoint is refused without --resume)")
    g.add_argument("--cache-dir", default=None, help="cache weight maps on disk here (default: none: kept in memory only)")
    g.add_argument("--work-dir", default=None, help="checkpoints and logs (default: the output path without suffix)")
    g.add_argument("--workers", type=_workers, default=0, help="data loader worker processes")
    g.add_argument("--seed", type=_seed, default=None,
                   help="random seed (weights, tiles, augmentation) (default: 0, or on --resume the run's)")
    g.add_argument("--no-progress", action="store_true", help="no start-up line, progress or epoch lines")
    p.set_defaults(func=cmd_train)

    p = command("demo", help="train a small U-Net on synthetic nuclei, segment a held-out image, draw it",
                description="The built-in example: about a minute on 2 quiet cores, "
                            "no GPU or download needed. Writes into OUTPUT: demo.png, model.safetensors, heldout.tif, heldout_labels.tif, "
                            "history.csv, history.json and curves.png (replacing only files an earlier demo wrote).")
    p.add_argument("-o", "--output", default="demo_output", help="output folder")
    p.add_argument("--quick", action="store_true", help="a few training steps only (a smoke test)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's epochs (default: 70)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (data, weights, tiles)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=_integer(0, 1024), default=1,
                   help="torch CPU threads (0: torch's default, every core) (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = command("segment", help="segment image files (TIFF, PNG, JPEG) with a saved model",
                description="One output per input: OUTDIR/<input name without its suffix>.tif (or .ome.zarr), "
                            "written atomically (a hidden .<name>.<hex>.partial.* file until complete; leftovers "
                            "of killed runs are removed). An output folder where an output or an overlay would "
                            "replace an input is refused. Small files (up to a megapixel) of one shape are "
                            "segmented in batches of up to 32, each with its own normalisation and the result it "
                            "gets alone. Under torchrun the files are shared among the processes. @FILE in the "
                            "arguments stands for FILE's lines, one argument each: -i @list.txt segments the "
                            "inputs listed there (one per line; blanks around a line, blank lines and lines "
                            "starting with # ignored; relative paths relative to the current folder, not to the "
                            "list's), a list every part of a job array shares.",
                fromfile_prefix_chars="@")
    p.add_argument("-i", "--input", nargs="+", action="extend", required=True,
                   help="files, folders or glob patterns; a folder gives the images directly in it, names starting "
                        "with '.' skipped (macOS's ._* files, unfinished outputs), as wildcards skip them; a hidden "
                        "file named is taken; @LIST: the inputs LIST names, one per line (a file whose name "
                        "starts with @: ./@name); -i may be given more than once")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the outputs (created if needed)")
    p.add_argument("-m", "--model", required=True, help="model file written by unet_fast.save_model")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="folders give the images in their subfolders at any depth too (hidden ones skipped, an "
                        ".ome.zarr being one image, each folder entered once however symlinks lead to it); each "
                        "output goes to the same subfolder of OUTDIR as its input's in the folder named "
                        "(-i plates/ -o out/: plates/p1/A01.tif -> out/p1/A01.tif, overlays to "
                        "out/overlays/p1/A01.png); a folder named inside another is a part of it; a glob pattern "
                        "stands for its folders before the first wildcard, the folders it matches listed as named "
                        "ones (-i 'plates/**/*.tif': plates); OUTDIR is not listed when it lies inside a folder "
                        "named")
    _inference_flags(p)
    p.add_argument("--output", choices=("labels", "probabilities", "instances"), default="labels",
                   help="labels: a class per pixel; probabilities: one per class; instances (2-class models): "
                        "objects numbered 1..K, uint16 (uint32 above 65534 objects), the same whatever the tiles")
    p.add_argument("--format", choices=("tif", "ome.zarr"), default="tif",
                   help="tiled BigTIFF (classes as samples per pixel) or OME-Zarr (class labels and instances: "
                        "an NGFF label image)")
    _instance_flags(p)
    p.add_argument("--overlay", action="store_true",
                   help="also write OUTDIR/overlays/<name>.png: the image with the result's outlines, at most 1024 px "
                        "(an existing one is replaced only if unet-fast wrote it)")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="skip inputs whose output exists, holds the kind --output asks for (told by the provenance "
                        "segment records, else by its data type: labels uint8 or int32, instances uint16 or uint32, "
                        "probabilities floats with a class axis) and records the same model and settings as this run (--tta, --scale, --dtype, the "
                        "instance rules); an existing output of another kind, model or setting is refused before "
                        "anything is segmented. With --overlay, a skipped input's missing overlay is drawn from its "
                        "output")
    p.add_argument("--num-parts", type=_positive_int,
                   help="split the file list into this many parts ... (default: 1, no split)")
    p.add_argument("--part-id", type=_non_negative_int,
                   help="... and segment part K (0-based), e.g. a job-array index (default: 0)")
    p.add_argument("--max-pixels", type=_positive_int, default=2 ** 30,
                   help="refuse files declaring more pixels, or more once resampled by the model's scale or --scale "
                        "(tiled TIFFs too: raise it to segment larger ones)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_segment)

    p = command("measure", help="measure the objects of instance label images into CSV tables (area, centroid, "
                                "bounding box, intensities)",
                description="One row per object of every instance label image (0 background, 1..K one object "
                            "each: what `segment --output instances` writes; a stack's planes each on their own) "
                            "in OUTDIR/objects.csv: the label file, (plane,) label, area_px, centroid_y_px, "
                            "centroid_x_px, bbox_min_row, bbox_min_col, bbox_max_row, bbox_max_col (inclusive); "
                            "where a pixel size is recorded (in the label file, else in its image) also area_<u>2, "
                            "centroid_y_<u> and centroid_x_<u> in its unit (um: micrometers); with --images, the "
                            "mean, min, max and sum of each object's pixels in its image, per channel "
                            "(intensity_mean, ...; _c<k> with several channels), as stored. OUTDIR/summary.csv: "
                            "one row per file (objects; total, mean and median area). Files are read in bands of "
                            "rows. Each table is written atomically and replaces only a table "
                            "measure wrote. A file that cannot be measured is reported as FAILED (exit status "
                            "1) and left out. @FILE stands for FILE's lines, one argument each.",
                fromfile_prefix_chars="@")
    p.add_argument("-i", "--input", nargs="+", action="extend", required=True,
                   help="instance label images: files, folders (the images directly in them) or glob patterns, as "
                        "segment takes them; @LIST: those LIST names, one per line; -i may be given more than once")
    p.add_argument("--images", nargs="+", action="extend", default=None,
                   help="intensity images (files, folders or patterns): each label file is paired with the image "
                        "of its base name (segment's OUTDIR/A01.tif with A01.tif, A01.ome.tif, A01.png or "
                        "A01.ome.zarr) (default: none, no intensity columns)")
    p.add_argument("--label-suffix", default="",
                   help="label files are named <image base name><suffix>.* (e.g. _labels) (default: no suffix)")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="folders (of -i and --images) give the files in their subfolders at any depth too, as "
                        "segment -r lists them; a label file is paired with the image of its base name in the "
                        "same subfolder first (-r -i out/ --images plates/: out/p1/A01.tif with "
                        "plates/p1/A01.tif), and overlays segment drew (out/overlays/...) are passed over "
                        "(default: off)")
    p.add_argument("-o", "--output-dir", required=True,
                   help="folder for objects.csv and summary.csv (created if needed)")
    p.add_argument("--max-pixels", type=_positive_int, default=2 ** 30,
                   help="refuse files declaring more pixels (a guard against files declaring huge sizes; memory "
                        "holds a band of rows whatever the size: raise it to measure larger ones)")
    p.add_argument("--no-progress", action="store_true", help="no line per file")
    p.set_defaults(func=cmd_measure)

    p = command("export", help="write a model as a bioimage.io package, ONNX or TorchScript",
                description="Writes OUTPUT, never overwriting a file. bioimageio: a .zip for the bioimage.io model "
                            "zoo and the tools that run it (Fiji/deepImageJ, ilastik, QuPath, napari); onnx: a .onnx "
                            "file; torchscript: a .pt file. Any batch size and legal image size runs.")
    p.add_argument("model", help="model file (.safetensors written by unet-fast train or save_model)")
    p.add_argument("--format", required=True, choices=("bioimageio", "onnx", "torchscript"), help="what to write")
    p.add_argument("-o", "--output", required=True, help="file to write: .zip (bioimageio), .onnx or .pt (torchscript)")
    p.add_argument("--test-image", help="bioimageio: an image (TIFF/PNG) of your data; its centre becomes the "
                                        "package's test input (default: a synthetic nuclei image)")
    p.add_argument("--name", help="bioimageio: the model's name (default: from the output file name)")
    p.add_argument("--author", action="append", help="bioimageio: an author's name (repeat for several; default: none)")
    p.add_argument("--license", help="bioimageio: SPDX license of the weights (default CC-BY-4.0)")
    p.add_argument("--description", help="bioimageio: one sentence on what the model segments (default: none)")
    p.add_argument("--ignore-scale", action="store_true",
                   help="export a model that resamples its images (trained with --object-size) anyway: the file "
                        "cannot record the factor, so resample images by it yourself (default: refused)")
    p.set_defaults(func=cmd_export)

    p = command("evaluate", help="score a model on labelled images (IoU, Dice, object F1, AP, Rand error)",
                description="Segment each labelled image into objects as `segment --output instances` does and "
                            "score them: foreground IoU and Dice, object precision/recall/F1 at IoU 0.5, the "
                            "mean over IoU 0.5..0.95 of TP/(TP+FP+FN) (AP, as the nuclei literature reports) "
                            "and of F1, and the ISBI 2012 Rand error. Writes OUTDIR/evaluation.csv (a row per "
                            "image and the mean) and prints a summary. Labels with more than two values (or two "
                            "without a 0) are instances; a {0, v} mask's objects are its connected components.")
    p.add_argument("-m", "--model", required=True, help="model file (2 classes)")
    p.add_argument("--images", required=True, help="folder of images, or a multi-page TIFF stack")
    p.add_argument("--labels", required=True, help="folder of label images matched by base name, or a label stack")
    p.add_argument("--label-suffix", default="",
                   help="label files are named <image base name><suffix>.* (default: no suffix)")
    p.add_argument("--ignore-label", type=int, default=None, metavar="V",
                   help="pixels of label value V were not annotated: they count in no score, and predicted objects "
                        "lying mostly in them are no false positives (default: every pixel is annotated)")
    p.add_argument("-o", "--output-dir", default="evaluation",
                   help="for evaluation.csv and overlays (default: %(default)s)")
    p.add_argument("--overlay", action="store_true",
                   help="write OUTDIR/overlays/<name>.png: predicted outlines in yellow, true ones in cyan, pixels "
                        "not annotated (--ignore-label) dimmed and hatched in magenta (an existing one is replaced "
                        "only if unet-fast wrote it)")
    _instance_flags(p)
    _inference_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no line per image while it runs")
    p.set_defaults(func=cmd_evaluate)
    return parser


# ---- errors: one line each, naming the argument

def _flag(parser: argparse.ArgumentParser, argument: str) -> str:
    """The option strings of the argument whose dest is ``argument`` ("a/b": both)."""
    names = []
    for part in argument.split("/"):
        action = next((a for a in parser._actions if a.dest == part), None)
        names.append("/".join(action.option_strings) if action is not None and action.option_strings else part)
    return " and ".join(names)


def _report(error: BaseException, args) -> int:
    """Print one line for ``error``; the exit status: 2 for an argument's fault, else 1."""
    where = f"unet-fast {args.command}"
    if isinstance(error, BadArgument):
        print(f"{where}: error: argument {_flag(args.parser, error.argument)}: {one_line(error, error.detail)}",
              file=sys.stderr)
        return 2
    print(f"{where}: error: {one_line(error)}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _one_line_warnings(where: str):
    """Warnings shown as one line while the command runs, "unet-fast evaluate: warning: ...", not a source path,
    line number and code line that say nothing to a user of the command (--debug keeps Python's form)."""
    import warnings

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"{where}: warning: {message}\n"

    previous, warnings.formatwarning = warnings.formatwarning, one_line
    try:
        yield
    finally:
        warnings.formatwarning = previous


def _quiet_abandoned_reads() -> None:
    """zarr reads chunks in asyncio tasks: when one fails (a truncated TIFF), its siblings are abandoned,
    and at exit each prints a "Task was destroyed" or "never retrieved" report with a traceback, over
    a hundred lines after the one that matters, which segment has already printed."""
    import logging
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message="Enable tracemalloc", category=RuntimeWarning)
    import threading

    if not isinstance(sys.unraisablehook, _QuietAfterStop):
        sys.unraisablehook = _QuietAfterStop(sys.unraisablehook)
    if not isinstance(threading.excepthook, _QuietAfterStop):
        threading.excepthook = _QuietAfterStop(threading.excepthook)


class _QuietAfterStop:
    """A sys.unraisablehook (or threading.excepthook) that drops the reports of exceptions Python could
    not raise once the run is stopping: a SIGTERM's SystemExit or a Ctrl-C's KeyboardInterrupt that landed
    in a weakref callback or __del__ (termination.check() stops the run instead), after either signal every
    report, and always the "Event loop is closed" tracebacks of the zarr reads abandoned at exit (a truncated
    TIFF: segment has printed its FAILED line). The line main() prints is the one that matters."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, report):
        if isinstance(report.exc_value, (SystemExit, KeyboardInterrupt)) or termination.received_in_this_process():
            return
        if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed":
            return
        self.previous(report)


def _inference_flags(p) -> None:
    """The flags of tiled inference that segment and evaluate share."""
    p.add_argument("--tile-size", type=_tile, help="input tile edge (default: planned from memory)")
    p.add_argument("--batch-size", type=_positive_int, help="tiles per forward (default: planned)")
    p.add_argument("--device", help="cpu, cuda or cuda:K (default: cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="compute precision (default: fp32, the reference's numbers); bf16 is faster on GPUs and on "
                        "CPUs with AVX-512 BF16 or AMX (about 2x there), fp16 on GPUs only (8-11x slower than fp32 on "
                        "CPUs without fp16 kernels: a warning says so)")
    p.add_argument("--nonfinite", choices=("error", "zero"), default=None,
                   help="NaN/inf pixels in float images: error (refused before any work), or zero (statistics "
                        "from the finite pixels, the others set to 0); default: the model's normalisation's rule, "
                        "error unless it says")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the predictions of the 8 flips and 90-degree rotations "
                        "of every tile (8 times the compute; slightly more accurate outlines)")
    p.add_argument("--scale", type=_number(1 / 16, 16, high_open=False), default=None, metavar="FACTOR",
                   help="resample each image by FACTOR before the network, the result back after it (default: the "
                        "model's, which train chose to bring the objects to its --object-size; 1 for older models)")


def _instance_flags(p) -> None:
    from .instance_options import DEFAULT_SMOOTHING, MAX_SMOOTHING, MIN_SMOOTHING, InstanceOptions

    defaults = InstanceOptions()
    p.add_argument("--min-size", type=_non_negative_int, default=None, metavar="PX",
                   help=f"instances: remove objects of fewer pixels (default {defaults.min_size}); this, --border, "
                        f"--smoothing and the cores of --split count the network's pixels: with a model that "
                        f"resamples images by a scale s (see --scale), 1/s^2 of the image's per pixel (1/s for "
                        f"--border and --smoothing)")
    p.add_argument("--no-fill-holes", action="store_true", help="instances: keep holes inside objects")
    p.add_argument("--border", type=_non_negative_int, default=None, metavar="PX",
                   help=f"instances: give background within this distance of two objects to the nearest "
                        f"(default {defaults.border}; 0: off)")
    p.add_argument("--threshold", type=_probability, default=None, metavar="P",
                   help=f"instances: foreground where its probability (smoothed, see --smoothing) is above P "
                        f"(default {defaults.threshold})")
    p.add_argument("--smoothing", type=_number(0.0, MAX_SMOOTHING, high_open=False), default=None, metavar="PX",
                   help=f"instances: smooth the foreground probability by a Gaussian of this sigma before "
                        f"--threshold, for smooth outlines (default {DEFAULT_SMOOTHING:g}, 0 with --no-split; 0: off; "
                        f"else at least {MIN_SMOOTHING:g})")
    p.add_argument("--split", type=_probability, default=None, metavar="P",
                   help=f"instances: split objects with two or more cores (regions of >= {defaults.core_size} px "
                        f"where the probability is above P) along the probability's valleys (default {defaults.split})")
    p.add_argument("--no-split", action="store_true", help="instances: never split an object")


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (kill, torchrun stopping a job, a scheduler's time limit) unwinds like Ctrl-C, so that
    # temporary files are removed on the way out instead of being left behind; installed first, and
    # Ctrl-C caught from the first line, since building the parser and the commands import torch
    if not isinstance(sys.unraisablehook, _QuietAfterStop):  # a signal's exception swallowed while importing torch
        sys.unraisablehook = _QuietAfterStop(sys.unraisablehook)
    try:
        with termination.handling(interrupts=True, ignore_after_stop=argv is None):  # None: the process is the command
            try:
                return _main(argv)
            except (KeyboardInterrupt, SystemExit) as stop:
                if termination.requested() is None:
                    raise
                if isinstance(stop, SystemExit):
                    raise
                termination.check()      # Ctrl-C and SIGTERM both: SIGTERM's status
    except KeyboardInterrupt:
        print(f"unet-fast{_command(argv)}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as stop:
        # said here, outside handling(): a SIGTERM that lands while handling() installs its handlers raises there,
        # before the block above (the process exited 143 saying nothing)
        if stop.code == 128 + signal.SIGTERM and termination.received_in_this_process():
            print(f"unet-fast{_command(argv)}: terminated (SIGTERM)", file=sys.stderr)
        raise


def _stdout_closed() -> bool:
    """Whether standard output is a pipe its reader closed; if so it is pointed at /dev/null, so that Python's
    flush at exit does not fail on it again."""
    import select

    try:
        descriptor = sys.stdout.fileno()
        poll = select.poll()
        poll.register(descriptor, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poll.poll(0))   # a pipe whose reader is gone
    except (OSError, ValueError, AttributeError):   # no real file (a test's capture): not a broken pipe
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), descriptor)
    return closed


def _command(argv) -> str:
    """" train" for the command line ``argv`` (sys.argv without the program), or "" if none is named."""
    words = sys.argv[1:] if argv is None else argv
    return next((f" {word}" for word in words if not word.startswith("-")), "")


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or checks.debugging()
    if not debug:
        _quiet_abandoned_reads()
    with _debugging(debug):     # what the command reports per file (its FAILED lines) has tracebacks too
        return _run(args, argv, debug)


@contextlib.contextmanager
def _debugging(debug: bool):
    before = os.environ.get(DEBUG_ENVIRONMENT)
    if debug:
        os.environ[DEBUG_ENVIRONMENT] = "1"
    try:
        yield
    finally:
        if debug and before is None:
            del os.environ[DEBUG_ENVIRONMENT]
        elif debug:
            os.environ[DEBUG_ENVIRONMENT] = before


def _run(args, argv, debug: bool) -> int:
    try:
        with _one_line_warnings(f"unet-fast{_command(argv)}") if not debug else contextlib.nullcontext():
            status = args.func(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BrokenPipeError as error:
        if not _stdout_closed():
            return _report(error, args)
        return 128 + signal.SIGPIPE  # `unet-fast sizes | head`: the reader had enough; quiet, as `seq | head` is
    except BaseException as error:
        termination.check()          # SIGTERM turned into another error on its way (a library's except)
        if debug or not isinstance(error, Exception):
            raise
        return _report(error, args)
    termination.check()              # SIGTERM whose exception was swallowed, in a command with no check
    return status


if __name__ == "__main__":
    sys.exit(main())
