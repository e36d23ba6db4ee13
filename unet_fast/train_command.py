"""The `unet-fast train` command: a recipe from the flags (or the checkpoint --resume continues), the labelled
images of the folders or stacks given, the work dir a run holds, and ``unet_fast.train.fit``. The parser's flags
are in ``unet_fast.cli``; every user mistake is a BadArgument naming the flag (exit status 2)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from .checks import BadArgument, blame, blame_config


#: train's flags that set a recipe field of the same name (None: the recipe's value)
RECIPE_FLAGS = ("epochs", "batch_size", "tiles_per_epoch", "optimizer", "lr", "momentum", "weight_decay", "lr_schedule",
                "warmup_steps", "depth", "base_channels", "padding", "dropout", "w0", "sigma", "flips", "rotation",
                "elastic_sigma", "zoom", "grey_values", "gamma", "imaging", "noise", "percentiles", "clip",
                "object_size", "dice")


def _labelled_images(images, labels, args, recipe, num_classes: int):
    """A dataset of labelled images: two folders matched by name, or two multi-page TIFF stacks."""
    from .data import ImageFolderDataset, TiffStackDataset, check_ignore_label

    try:
        check_ignore_label(args.ignore_label, num_classes, args.label_kind)
    except ValueError as error:
        raise BadArgument("ignore_label", str(error)) from None
    options = dict(num_classes=num_classes, label_kind=args.label_kind, w0=recipe.w0, sigma=recipe.sigma,
                   class_weights=recipe.class_weights, normalization=recipe.normalization(), cache_dir=args.cache_dir,
                   ignore_label=args.ignore_label)
    if Path(images).is_file():
        return TiffStackDataset(images, labels, **options)
    return ImageFolderDataset(images, labels, label_suffix=args.label_suffix, **options)


def cmd_train(args) -> int:
    """Under torchrun the ranks join first, and each checks the arguments and reads the images within
    ``ranks.shared_failures``: a file one node cannot read, or the work dir rank 0 finds held, stops every
    rank with an error naming it (a rank that failed before joining left the others waiting, deaf to
    torchrun's SIGTERM until it killed them, and on other machines for 30 min)."""
    from .checks import check_device
    from .ranks import shared_failures
    from .torchrun import Torchrun

    check_device(args.device)       # the same on every rank: before they meet
    job = Torchrun.join(args.device)
    try:
        with contextlib.ExitStack() as held:
            with shared_failures("checking the arguments and reading the images"):
                run = _checked_run(args, held)
            return _train_from_folders(args, job, *run)
    finally:
        job.leave()


def _checked_run(args, held: contextlib.ExitStack):
    """What cmd_train checks and reads before training (the work dir held in ``held``): the arguments of
    ``_train_from_folders`` after ``args`` and the job."""
    from . import geometry, image_io
    from .architecture import check_config
    from .checks import check_device, check_writable_folder, overlapping, same_file
    from .model_file import check_model_path
    from .train import load_checkpoint

    if (args.val_images is None) != (args.val_labels is None):
        raise BadArgument("val_images/val_labels", "--val-images and --val-labels go together")
    if args.val_images is not None and args.val_fraction:
        raise BadArgument("val_fraction", "--val-fraction and --val-images exclude each other; give one")
    if args.best_metric is not None and args.val_images is None and not args.val_fraction:
        raise BadArgument("best_metric", "the best model is chosen on validation images: give --val-images and "
                                         "--val-labels, or --val-fraction (or leave --best-metric out)")
    given = _given_recipe_values(args)
    if args.no_augment:     # a recipe without augmentation, so the model file and --resume know it
        from .recipes import AUGMENTATION_FIELDS, AUGMENTATION_OFF

        clash = [name for name in AUGMENTATION_FIELDS if name in given]
        if clash:
            raise BadArgument(clash[0], "sets an augmentation, which --no-augment turns off: give one of the two")
        given = {**given, **AUGMENTATION_OFF}
    recipe = _flags_recipe(args, given)
    if "gamma" in given and not recipe.grey_values:
        raise BadArgument("gamma", "--gamma sets the grey values' range, which --no-grey-values turns off: give one "
                                   "of the two")
    # everything that can be checked before the first epoch, so that a wrong path fails now, not after it
    check_model_path(args.output, "output")
    if args.resume is not None and not Path(args.resume).is_file():   # before the work dir's files are judged by it
        saved = Path(args.resume) / "last.safetensors"
        raise BadArgument("resume", f"{args.resume!r}: " + (
            f"a folder; the checkpoint in it is {str(saved)!r}" if saved.is_file() else
            "a folder, not a checkpoint (WORK_DIR/last.safetensors)" if Path(args.resume).is_dir() else
            "no such file"))
    work_dir = Path(args.work_dir) if args.work_dir else Path(args.output).with_suffix("")
    if overlapping(args.output, work_dir):
        raise BadArgument("work_dir", f"{str(work_dir)!r} is, or lies inside, the model file -o writes "
                                      f"({args.output!r}); checkpoints and logs need another folder")
    check_writable_folder(work_dir, "work_dir")
    for name in ("images", "labels", "val_images", "val_labels"):   # the logs would become images there
        if getattr(args, name) is not None and same_file(work_dir, getattr(args, name)):
            raise BadArgument("work_dir", f"{str(work_dir)!r} is the --{name.replace('_', '-')} folder; checkpoints "
                                          f"and logs need another (--work-dir)")
    checkpoint, best = work_dir / "last.safetensors", work_dir / "best.safetensors"
    if args.resume and same_file(args.output, args.resume):
        raise BadArgument("output", f"{args.output!r} is the checkpoint --resume reads, which the model would "
                                    f"replace at the end; name the model otherwise")
    for written, what in ((checkpoint, "the training checkpoint (read by --resume)"), (best, "the best model so far")):
        if same_file(args.output, written) or Path(os.path.abspath(args.output)) == Path(os.path.abspath(written)):
            raise BadArgument("output", f"{args.output!r} is {what}, {written}, which the run writes as it goes; "
                                        f"name the model otherwise")
    if Path(args.output).exists():      # a model file of ours is replaced, as segment replaces its own outputs
        from .model_file import ModelFileError, read_model_config

        try:
            read_model_config(args.output)
        except (ModelFileError, OSError, ValueError):
            raise BadArgument("output", f"{args.output!r} exists and is no unet_fast model file, which the model would "
                                        f"replace; name the model otherwise, or move that file") from None
    _refuse_another_runs_files(args, work_dir)
    if args.cache_dir is not None:
        check_writable_folder(args.cache_dir, "cache_dir")
    check_device(args.device)
    for name in ("images", "labels", "val_images", "val_labels"):
        if getattr(args, name) is not None and not Path(getattr(args, name)).exists():
            raise BadArgument(name, f"{getattr(args, name)!r}: no such file or folder")
    for images, labels in (("images", "labels"), ("val_images", "val_labels")):
        if getattr(args, images) is not None and same_file(getattr(args, images), getattr(args, labels)):
            raise BadArgument(labels, f"{getattr(args, labels)!r} is the --{images.replace('_', '-')} "
                                      f"{'file' if Path(getattr(args, images)).is_file() else 'folder'} itself; "
                                      f"labels are separate images, matched to the images by name")
    if args.val_images is not None and same_file(args.val_images, args.images):
        raise BadArgument("val_images", f"{args.val_images!r} is the --images "
                                        f"{'file' if Path(args.images).is_file() else 'folder'}: the best model would "
                                        f"be chosen on the data it was trained on; give images kept aside (or "
                                        f"--val-fraction)")
    seed = 0 if args.seed is None else args.seed
    tile_size = args.tile_size
    config = dict(num_classes=2 if args.num_classes is None else args.num_classes, depth=recipe.depth,
                  base_channels=recipe.base_channels, padding=recipe.padding, dropout=recipe.dropout)
    if args.resume:
        with blame("resume"):
            state = load_checkpoint(args.resume)
            config = state["model_config"]              # the run being resumed decides
            if not isinstance(config, dict):
                raise ValueError(f"{args.resume}: its model_config is not an object: {config!r:.80}")
        config = {key: value for key, value in config.items() if key != "backend"}
        recipe, seed, tile_size = _resumed_run(args, state, config, recipe, given)
    with blame("resume") if args.resume else blame_config():     # a checkpoint's config is its fault
        check_config(**config)
    if tile_size is not None:
        trace = geometry.trace_sizes(tile_size, config["depth"], config["padding"])
        if trace.problem is not None:
            raise BadArgument("tile_size" if args.tile_size is not None else "resume",
                              geometry.size_error_message(tile_size, config["depth"], config["padding"],
                                                          trace.problem, tile=True))
    held.enter_context(_work_dir_held(work_dir, "work_dir" if args.work_dir else "output"))
    _refuse_another_runs_files(args, work_dir)      # again: another run may have begun since the check above
    for name in RUN_FILES:      # leftovers of a killed run, removed only once the work dir is this run's
        image_io.remove_leftovers(work_dir / name)
    image_io.remove_leftovers(args.output)
    return (recipe, config, seed, tile_size, work_dir,
            *_read_folders(args, recipe, config, seed=seed, work_dir=work_dir))


def _rank() -> int:
    """This process's rank: the process group's, which cmd_train joins first (0 without one); RANK alone, set
    without WORLD_SIZE, named no job, and such a process trained as rank 0 but never saved its model."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


#: what a run writes into its work dir (besides DATA_RECORD), none of which another run may replace
RUN_FILES = ("last.safetensors", "best.safetensors", "history.csv", "history.json", "curves.png")


def _refuse_another_runs_files(args, work_dir: Path) -> None:
    """BadArgument when the work dir holds files of a run this one does not continue: a new run's, or a resume's
    into a work dir other than its checkpoint's (which replaced that dir's run's checkpoint and logs, and called
    its best model this run's)."""
    from .checks import same_file

    if args.resume is not None and same_file(Path(args.resume).parent, work_dir):
        return                                  # the run goes on writing its own files
    argument = "work_dir" if args.work_dir else "output"
    checkpoint = work_dir / "last.safetensors"
    if checkpoint.exists() and args.resume is not None:
        raise BadArgument(argument, f"{str(checkpoint)!r} is the checkpoint of another run than --resume's, which "
                                    f"this run would replace: a resumed run writes into its checkpoint's work dir "
                                    f"(--work-dir {str(Path(args.resume).parent)!r}) or a new one")
    if checkpoint.exists():
        raise BadArgument(argument, f"{str(checkpoint)!r} is the checkpoint of an earlier run, which this run would "
                                    f"replace: pass --resume {checkpoint} to continue that run, or choose another "
                                    f"work dir (--work-dir) or remove it")
    earlier = [name for name in RUN_FILES if (work_dir / name).exists()]
    if earlier:
        raise BadArgument(argument, f"{str(work_dir)!r} holds {', '.join(earlier)}, which this run would replace; "
                                    f"choose another work dir (--work-dir) or move them")


@contextlib.contextmanager
def _work_dir_held(work_dir: Path, argument: str):
    """The work dir, made and held for this run (by rank 0 under torchrun): another ``unet-fast train`` into it
    while this one runs is refused (BadArgument naming ``argument``). Two runs started together both found it free
    of checkpoints and logs, then wrote their checkpoints, logs and image records over each other's. An advisory
    flock on the folder itself, which ends with the process however it ends; where the file system has none (some
    network file systems) the run goes on unguarded. Folders made here are removed again if the run fails with
    nothing written in them (a usage error found in the images: nothing written, as before any work)."""
    made = [folder for folder in (work_dir, *work_dir.parents) if not folder.exists()]
    work_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(work_dir, os.O_RDONLY) if _rank() == 0 else None
    held = False        # (the folders of a run that holds the work dir are that run's, even where this one made them)
    try:
        if descriptor is not None:
            import fcntl

            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BadArgument(argument, f"{str(work_dir)!r} is the work dir of another unet-fast train, which "
                                            f"is running: let it finish, or choose another work dir (--work-dir)"
                                  ) from None
            except OSError:
                pass
            held = True
        yield
    except BaseException:
        for folder in made if held else ():
            try:
                folder.rmdir()
            except OSError:     # something was written there
                break
        raise
    finally:
        if descriptor is not None:
            os.close(descriptor)


#: the recipe's fields that describe the network (a resumed run takes them from the checkpoint's model)
NETWORK_FIELDS = ("depth", "base_channels", "padding", "dropout")


def _given_recipe_values(args) -> dict:
    """The recipe values given by flags (a flag left out is None)."""
    given = {name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None}
    if args.class_weights:
        given["class_weights"] = None if args.class_weights == "none" else args.class_weights
    return given


def _flags_recipe(args, given: dict):
    """--recipe with the values of the flags given."""
    from .recipes import get_recipe

    try:
        # only the flags given (class_weights None included): Recipe.replace would skip a None
        recipe = dataclasses.replace(get_recipe(args.recipe or "default"), **given)
    except ValueError as error:      # a recipe value out of range: the flag its message names first
        text = str(error)
        found = sorted((text.find(name), name) for name in RECIPE_FLAGS + ("class_weights",) if name in text)
        raise BadArgument(found[0][1] if found else "recipe", text) from error
    return recipe


def _resumed_run(args, state: dict, config: dict, recipe, given: dict):
    """(recipe, seed, tile size) of the run ``--resume`` continues: the checkpoint's. A flag given with
    another value than the run's is a usage error (resuming continues the same run with the same
    options), except --epochs, which may extend or shorten the run but not below the epochs done."""
    from .recipes import AUGMENTATION_OFF, RECIPES, UNRECORDED_VALUES, Recipe, same_value

    def refuse(dest, value, saved, what=None):
        raise BadArgument(dest, f"{args.resume} was trained with {what or dest} {saved!r}, got {value!r}: --resume "
                                f"continues the same run with the same options; leave the flag out (or give "
                                f"the run's value), or start a new run in another --work-dir")

    for name in NETWORK_FIELDS:
        if name in given and name in config and not same_value(given[name], config[name]):
            refuse(name, given[name], config[name])
    if args.num_classes is not None and args.num_classes != config.get("num_classes"):
        refuse("num_classes", args.num_classes, config.get("num_classes"))
    saved_seed = state.get("seed")
    if args.seed is not None and saved_seed is not None and args.seed != saved_seed:
        refuse("seed", args.seed, saved_seed)
    seed = saved_seed if args.seed is None and isinstance(saved_seed, int) else (args.seed or 0)
    if args.amp and state.get("amp") is False:
        refuse("amp", True, False, "--amp")
    args.amp = args.amp or bool(state.get("amp"))   # the run's own (--amp is a switch: not given reads False)
    if args.time_limit is None and state.get("time_limit") is not None:    # the run's own, which a larger one extends
        args.time_limit = state["time_limit"] / 60
    if args.best_metric is not None and state.get("best_metric") not in (None, args.best_metric):
        refuse("best_metric", args.best_metric, state["best_metric"], "--best-metric")
    done = state["epoch"]
    if args.epochs is not None and args.epochs < done:
        raise BadArgument("epochs", f"{args.resume} has trained {done} epoch(s) already; --epochs counts the "
                                    f"whole run: give at least {done} (or leave it out for the run's own)")
    tile_size = args.tile_size
    if state.get("tile_size") is not None:
        if tile_size is not None and tile_size != state["tile_size"]:
            refuse("tile_size", tile_size, state["tile_size"], "tile size")
        tile_size = state["tile_size"]
    saved = state.get("recipe")
    if isinstance(saved, dict):            # checkpoints of earlier versions have none: the flags' recipe
        # before the zoom field, a --no-augment run recorded the recipe's augmentation: the flag is believed
        unrecorded_no_augment = args.no_augment and "zoom" not in saved
        saved = {**UNRECORDED_VALUES, **saved}
        for field, what, argument in (("custom_augmentation", "augmentation", "augment"),
                                      ("custom_loss", "loss", "loss_fn")):
            if saved[field]:
                raise BadArgument("resume", f"{args.resume} was trained from Python with a custom {what} "
                                            f"({saved[field]}), which the command line cannot run: resume it with "
                                            f"unet_fast.fit(..., {argument}=<that callable>, resume=...)")
        if args.recipe is not None and args.recipe != saved.get("name"):
            refuse("recipe", args.recipe, saved.get("name"), "recipe")
        if unrecorded_no_augment:
            saved.update(AUGMENTATION_OFF)
        for name, value in given.items():
            if name not in NETWORK_FIELDS and name != "epochs" and name in saved \
                    and not same_value(value, saved[name]):
                if args.no_augment and name in AUGMENTATION_OFF:
                    raise BadArgument("no_augment", f"{args.resume} was trained with augmentation ({name} "
                                                    f"{saved[name]!r}): --resume continues the same run with the same "
                                                    f"options; leave --no-augment out, or start a new run in another "
                                                    f"--work-dir")
                refuse(name, value, saved[name])
        with blame("resume"):
            known = {field.name for field in dataclasses.fields(Recipe)}
            recipe = dataclasses.replace(RECIPES.get(saved.get("name"), RECIPES["default"]),
                                         **{key: value for key, value in saved.items() if key in known})
    changes = {name: config[name] for name in NETWORK_FIELDS if name in config}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    with blame("resume"):
        recipe = dataclasses.replace(recipe, **changes)
    return recipe, seed, tile_size


def _warn_empty(names: list[str], what: str, consequence: str) -> None:
    if names and _rank() == 0:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        print(f"train: warning: {len(names)} {what} label image(s) hold no object: {shown}; {consequence}",
              file=sys.stderr)


def _warn_scattered(dataset, what: str) -> None:
    """A warning naming the label images that look like intensity images (--images and --labels swapped, or a
    raw image among the labels): the network would learn each grey value as an object."""
    if dataset.scattered and _rank() == 0:
        name, why = next(iter(dataset.scattered.items()))
        flag = "--val-" if what == "validation" else "--"
        print(f"train: warning: {len(dataset.scattered)} {what} label image(s) look like intensity images, not "
              f"labels: {name!r}: {why}; check that {flag}images and {flag}labels are not swapped", file=sys.stderr)


def _warn_ignore_label_unused(ignore_label, dataset) -> None:
    """A warning when no label image holds --ignore-label's value: a mistyped value (256 for 255) would train
    every unannotated pixel as background without a word."""
    import numpy as np

    from .data import IGNORE

    if ignore_label is None or _rank() != 0:
        return
    if not any(np.any(dataset[i].target == IGNORE) for i in range(len(dataset))):
        print(f"train: warning: no training label image holds --ignore-label {ignore_label}: every pixel counts as "
              f"annotated; check the value your annotation tool wrote", file=sys.stderr)


def _shared_images(train_data, val_data) -> list[str]:
    """'val (= train)' for each validation image whose pixels are those of a training image."""
    import hashlib

    import numpy as np

    def key(sample):
        image = np.ascontiguousarray(sample.image)
        return hashlib.sha256(repr((image.shape, str(image.dtype))).encode() + image.tobytes()).hexdigest()

    training = {key(train_data[i]): train_data[i].name for i in range(len(train_data))}
    shared = []
    for i in range(len(val_data)):
        sample = val_data[i]
        if key(sample) in training:
            shared.append(f"{sample.name} (= {training[key(sample)]})" if sample.name != training[key(sample)]
                          else sample.name)
    return shared


#: the images a run trains and validates on, by name, written into the work dir beside the checkpoint
DATA_RECORD = "training-images.json"


def _record_or_check_data(args, work_dir: Path, train_data, val_data) -> None:
    """A new run records which images it trains and validates on; a resumed one must use the same (another
    --val-fraction or folder trained on the held-out images, or other ones, and went on): BadArgument (resume)."""
    import json

    from .checks import same_file

    names = {"training": sorted(train_data[i].name for i in range(len(train_data))),
             "validation": sorted(val_data[i].name for i in range(len(val_data))) if val_data is not None else []}
    if args.resume is not None:
        _check_recorded_data(args, names)
        if same_file(Path(args.resume).parent, work_dir):
            return          # recorded there already (a resume into a new work dir records the run there too)
    if _rank() == 0:
        from .image_io import atomic_path

        if args.ignore_label is not None:
            names["ignore_label"] = args.ignore_label
        with atomic_path(work_dir / DATA_RECORD) as temporary:
            Path(temporary).write_text(json.dumps(names, indent=1))


def _check_recorded_data(args, names: dict) -> None:
    """BadArgument (resume, ignore_label) when the images and split ``names`` or --ignore-label differ from those
    recorded beside the checkpoint --resume reads (nothing to compare where none is recorded)."""
    import json

    recorded = Path(args.resume).parent / DATA_RECORD
    try:
        saved = json.loads(recorded.read_text())
    except (OSError, ValueError):       # runs from before the record, or a checkpoint moved alone
        return
    if not isinstance(saved, dict):
        return
    if saved.get("ignore_label") != args.ignore_label:   # absent: a run without it (or from before it)
        raise BadArgument("ignore_label", f"{args.resume} was trained with --ignore-label "
                                          f"{saved.get('ignore_label')}, got {args.ignore_label}: --resume "
                                          f"continues the same run on the same targets; give the run's value")
    changed = [f"{kind}: {len(set(names[kind]) - set(saved.get(kind, [])))} added, "
               f"{len(set(saved.get(kind, [])) - set(names[kind]))} left out" for kind in names
               if sorted(saved.get(kind, [])) != names[kind]]
    if changed:
        raise BadArgument("resume", f"{args.resume} trained on other images ({'; '.join(changed)}; recorded in "
                                    f"{recorded}): --resume continues the same run on the same images and split "
                                    f"(the same --images, --labels, --val-fraction or --val-images)")


def _read_folders(args, recipe, config: dict, *, seed: int, work_dir: Path):
    """Read and check every training and validation pair (usage errors): (dataset, train_data, val_data, model)."""
    import torch

    from .data import split_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    with blame("images/labels"):        # every pair now: a fault in the last one is as much theirs as in the first
        dataset = _labelled_images(args.images, args.labels, args, recipe, config["num_classes"])
        if args.val_fraction and len(dataset) < 2:     # before the labels are read and measured
            raise BadArgument("val_fraction", f"--val-fraction {args.val_fraction:g} needs at least 2 labelled images "
                                              f"to split, got {len(dataset)}; give --val-images, or leave it out")
        dataset.scale = _object_scale(dataset, recipe)
        empty = dataset.load_all()
        in_channels = dataset.in_channels
        if config.setdefault("in_channels", in_channels) != in_channels:
            raise ValueError(f"the images have {in_channels} channel(s) but the checkpoint's network takes "
                             f"{config['in_channels']}")
    _warn_empty(empty, "training", "they teach background only: check that they are the right files")
    _warn_scattered(dataset, "training")
    if config["num_classes"] == 2 and len(dataset.without_background) == len(dataset) \
            and _rank() == 0:          # (classes of a tissue may leave 0 unused)
        print("train: warning: no training label image holds background (0) anywhere: every pixel is an object or "
              "a class, so the network learns no background; check that the labels mark background with 0 (not, "
              "say, 1 or 255)", file=sys.stderr)
    _warn_ignore_label_unused(args.ignore_label, dataset)
    if args.val_images is not None:
        with blame("val_images/val_labels"):
            val_data = _labelled_images(args.val_images, args.val_labels, args, recipe, config["num_classes"])
            val_data.scale = dataset.scale
            val_empty = val_data.load_all()
            if val_data.in_channels != in_channels:
                raise ValueError(f"the validation images have {val_data.in_channels} channel(s) but the training "
                                 f"images {in_channels}")
        shared = _shared_images(dataset, val_data)
        if shared:
            raise BadArgument("val_images", f"{len(shared)} validation image(s) are training images too: "
                                            f"{', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}; the best "
                                            f"model would be chosen on the data it was trained on: validate on "
                                            f"images kept aside")
        _warn_scattered(val_data, "validation")
        _warn_empty(val_empty, "validation", "they add no object to the validation IoU and F1 (which are NaN "
                                             "when no image has any)")
        train_data = dataset
    else:
        with blame("val_fraction"):
            train_data, val_data = split_dataset(dataset, args.val_fraction, seed=seed)
    _record_or_check_data(args, work_dir, train_data, val_data)
    from . import UNet

    torch.manual_seed(seed)
    model = UNet(**config)             # DDP gives every rank rank 0's weights anyway
    torch.manual_seed(seed + _rank())   # but each rank its own dropout masks
    return dataset, train_data, val_data, model


def _train_from_folders(args, job, recipe, config: dict, seed: int, tile_size, work_dir: Path, dataset, train_data,
                        val_data, model) -> int:
    """Train on what ``_read_folders`` read, and save (rank 0)."""
    import warnings

    from . import save_model
    from .data import IgnoreLabelUnusedWarning
    from .pixel_size import common_pixel_size
    from .train import fit

    with warnings.catch_warnings():     # said above, of every image, by rank 0 only (the tiles see a part)
        warnings.simplefilter("ignore", IgnoreLabelUnusedWarning)
        result = fit(model, train_data, val_data, recipe=recipe, tile_size=tile_size, device=args.device,
                     amp=args.amp, checkpoint_dir=work_dir, resume=args.resume, log_dir=work_dir,
                     augment="recipe", seed=seed, num_workers=args.workers,
                     time_limit=args.time_limit * 60 if args.time_limit else None, best_metric=args.best_metric,
                     progress=False if args.no_progress else None)
    if job.rank == 0:
        pixel_size, problem = common_pixel_size([image for image, _ in dataset.pairs] if hasattr(dataset, "pairs")
                                                else [Path(args.images)])
        if problem:
            print(f"train: {problem}", file=sys.stderr)
        recorded = {} if pixel_size is None else {"pixel_size": pixel_size.to_dict()}
        last = result.history[-1] if result.history else {}
        used = result.tile_size if result.tile_size is not None else tile_size
        trained = recipe if used is None else dataclasses.replace(recipe, tile_size=used)  # the tile trained on
        save_model(result.model.cpu(), args.output, normalization=dataset.normalization, input_scale=dataset.scale,
                   epochs=last.get("epoch", 0), steps=last.get("step", 0), history=result.history[-1:],
                   recipe=dataclasses.asdict(trained), **recorded)
        print(f"saved {args.output} ({len(result.history)} epochs, {last.get('step', 0)} steps"
              + (", stopped by the time limit" if result.stopped_early else "") + "; "
              + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.endswith(("loss", "iou", "f1"))) + "); "
              f"checkpoints and logs in {work_dir}" + (f"; best model {result.best}" if result.best else ""))
    return 0


def _object_scale(dataset, recipe) -> float:
    """The factor the images are resampled by (``unet_fast.rescale.choose_scale``), said on stdout."""
    import numpy as np

    from .rescale import TOLERANCE, choose_scale

    if not recipe.object_size:
        return 1.0
    diameters = dataset.object_diameters()
    scale = choose_scale(diameters, recipe.object_size)
    median = float(np.median(diameters)) if diameters.size else None
    pixels = int(dataset.label_pixels * scale * scale)
    if pixels > MAX_RESAMPLED_TRAINING_PIXELS:
        raise BadArgument("object_size", f"the labels' objects are {median:.1f} px across (median): resampling them "
                                         f"to {recipe.object_size:g} px would make {pixels:,} training pixels (above "
                                         f"{MAX_RESAMPLED_TRAINING_PIXELS:,}); check the labels, give a smaller "
                                         f"--object-size, or 0 to train on the images as they are")
    if _rank() == 0:
        if median is None:
            print("objects in the labels: none measured (--object-size needs instance labels with objects; masks "
                  "and classes hold regions, not objects); images as they are")
            return scale
        print(f"objects in the labels: median diameter {median:.1f} px; " + (
            f"images as they are (within {TOLERANCE:g}x of --object-size {recipe.object_size:g})" if scale == 1.0 else
            f"every image resampled by {scale:.3g} (objects of {median * scale:.1f} px; --object-size "
            f"{recipe.object_size:g}), in segment and evaluate too"))
    return scale


#: --object-size may enlarge the training images up to this many pixels in all (about 1 GiB per float32 copy)
MAX_RESAMPLED_TRAINING_PIXELS = 2 ** 28
