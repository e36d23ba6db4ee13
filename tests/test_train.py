"""unet_fast.train: the loss falls, resume is exact, checkpoints/logs, validation, DDP with gloo."""
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import ahead
from unet_fast import UNet, load_model
from unet_fast.data import ArrayDataset, synthetic_nuclei
from unet_fast.instances import InstanceOptions, foreground_mask, label_instances
from unet_fast.metrics import foreground_iou
from unet_fast.normalization import Normalization
from unet_fast.weights import separate_touching
from unet_fast.train import BEST_METRICS, evaluate, load_checkpoint
from unet_fast.train import fit as fit_on_any_device

ROOT = Path(__file__).resolve().parents[1]

# These tests pin the loop's CPU behaviour: channels_last, the CPU's random state in checkpoints, the start-up
# line's thread count, bit-exact resume. fit's own default is the GPU where there is one (where the layout,
# the random states and cuDNN's backward differ), so on a GPU machine four of them failed; a test may still
# name another device.
fit = functools.partial(fit_on_any_device, device="cpu")


@pytest.fixture(scope="module")
def nuclei():
    images, labels = synthetic_nuclei(3, 64, seed=0)
    return ArrayDataset(images[:2], labels[:2]), ArrayDataset(images[2:], labels[2:])


def tiny_net(seed=0, dropout=0.5):
    torch.manual_seed(seed)
    return UNet(depth=2, base_channels=4, dropout=dropout)


def run(train, epochs, tmp, resume=None, **kwargs):
    model = tiny_net()
    options = dict(recipe="paper", tile_size=44, lr=0.01, tiles_per_epoch=2, batch_size=1, seed=3)
    options.update(kwargs)
    result = fit(model, train, epochs=epochs, checkpoint_dir=tmp, resume=resume, **options)
    return model, result


def test_loss_falls(nuclei):
    train, _ = nuclei
    model = tiny_net(dropout=0.0)
    before = evaluate(model, train)["loss"]
    result = fit(model, train, recipe="paper", epochs=6, tile_size=48, tiles_per_epoch=4, batch_size=2, lr=0.02,
                 augment=None)
    after = evaluate(model, train)["loss"]
    assert after < 0.8 * before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert [row["step"] for row in result.history] == [2, 4, 6, 8, 10, 12]


def test_a_run_records_the_augmentation_it_ran_and_resumes_only_with_it(nuclei, tmp_path):
    """fit(augment=None) checkpoints the recipe with every augmentation off, augment="default" with the paper's
    (both recorded the recipe's own), so the record says how the run trained and a resume must train so too."""
    from unet_fast.train import load_checkpoint

    train, _ = nuclei
    run(train, 1, tmp_path / "bare", augment=None)
    bare = load_checkpoint(tmp_path / "bare" / "last.safetensors")["recipe"]
    assert (bare["flips"], bare["rotation"], bare["elastic_sigma"], bare["grey_values"]) == (False, "none", 0.0, False)
    run(train, 1, tmp_path / "augmented")
    augmented = load_checkpoint(tmp_path / "augmented" / "last.safetensors")["recipe"]
    assert (augmented["flips"], augmented["rotation"], augmented["elastic_sigma"]) == (True, "any", 10.0)
    # the paper's augmentation, asked for by name from another recipe, is what the checkpoint records
    run(train, 1, tmp_path / "paper", recipe="default", augment="default")
    paper = load_checkpoint(tmp_path / "paper" / "last.safetensors")["recipe"]
    assert (paper["name"], paper["rotation"], paper["elastic_sigma"], paper["lr"]) == ("default", "any", 10.0, 0.01)
    # a resume with other augmentation is refused, as with any other training value; with the same it goes on
    with pytest.raises(ValueError, match=r"flips True -> False.*resuming continues the same run"):
        run(train, 2, tmp_path / "augmented", resume=tmp_path / "augmented" / "last.safetensors", augment=None)
    run(train, 2, tmp_path / "bare", resume=tmp_path / "bare" / "last.safetensors", augment=None)
    run(train, 2, tmp_path / "paper", resume=tmp_path / "paper" / "last.safetensors", recipe="default",
        augment="default")


def halve_contrast(image, target, weights, generator=None):
    return image * 0.5, target, weights


def test_a_run_with_a_callable_augmentation_records_its_name_not_the_recipes(nuclei, tmp_path, capsys):
    """A callable augmentation is not the recipe's: the checkpoint records every augmentation field off and the
    callable's name, a resume must pass a callable of that name, and the CLI, which cannot run it, refuses."""
    from unet_fast.cli import main
    from unet_fast.recipes import Recipe
    from unet_fast.train import load_checkpoint

    train, _ = nuclei
    run(train, 1, tmp_path / "custom", augment=halve_contrast)
    recorded = load_checkpoint(tmp_path / "custom" / "last.safetensors")["recipe"]
    assert recorded["custom_augmentation"] == f"{__name__}.halve_contrast"
    assert (recorded["flips"], recorded["rotation"], recorded["elastic_sigma"], recorded["grey_values"]) == \
        (False, "none", 0.0, False)
    assert "augmentation: custom (test_train.halve_contrast)" in \
        Recipe(**{**recorded, "percentiles": (1.0, 99.8)}).describe()
    last = tmp_path / "custom" / "last.safetensors"
    with pytest.raises(ValueError, match=r"custom_augmentation .*halve_contrast' -> ''"):
        run(train, 2, tmp_path / "custom", resume=last)     # the recipe's augmentation is not the one that ran
    with pytest.raises(ValueError, match="pass that callable as augment"):
        fit(tiny_net(), train, recipe=Recipe(**{**recorded, "percentiles": (1.0, 99.8)}), epochs=1, tile_size=44,
            tiles_per_epoch=2, batch_size=1)
    run(train, 2, tmp_path / "custom", resume=last, augment=halve_contrast)
    assert load_checkpoint(last)["epoch"] == 2
    images, labels = synthetic_nuclei(1, 48, seed=1)
    tifffile.imwrite(tmp_path / "image.tif", images[0].astype(np.float32))
    tifffile.imwrite(tmp_path / "labels.tif", labels[0].astype(np.uint16))
    assert main(["train", "--images", str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"),
                 "-o", str(tmp_path / "cli.safetensors"), "--resume", str(last), "--work-dir",
                 str(tmp_path / "cli")]) == 2
    assert "custom augmentation" in capsys.readouterr().err and not (tmp_path / "cli.safetensors").exists()


def test_a_custom_loss_is_recorded_by_name_and_a_resume_must_pass_it(nuclei, tmp_path):
    """fit(loss_fn=...) recorded the recipe's dice and resumed without it."""
    from unet_fast.losses import training_loss

    train, _ = nuclei
    loss = training_loss(0.0)
    run(train, 1, tmp_path, loss_fn=loss)
    last = tmp_path / "last.safetensors"
    recorded = load_checkpoint(last)["recipe"]
    assert recorded["custom_loss"] == f"{type(loss).__module__}.{type(loss).__qualname__}"
    with pytest.raises(ValueError, match=r"custom_loss '.*' -> ''"):
        run(train, 2, tmp_path, resume=last)
    run(train, 2, tmp_path, resume=last, loss_fn=loss)


def test_tiles_that_bring_their_own_augmentation_are_recorded_so_and_refuse_another(nuclei, tmp_path):
    from unet_fast.data import RandomTiles

    train, _ = nuclei
    tiles = RandomTiles(train, 44, depth=2, tiles_per_epoch=2, seed=1)
    with pytest.raises(ValueError, match=r"augment: train_data \(RandomTiles\) brings its own tiles"):
        fit(tiny_net(), tiles, epochs=1, augment=halve_contrast)
    fit(tiny_net(), tiles, epochs=1, lr=0.01, batch_size=1, checkpoint_dir=tmp_path)
    recorded = load_checkpoint(tmp_path / "last.safetensors")["recipe"]
    assert recorded["custom_augmentation"] == "tiles of unet_fast.data.RandomTiles" and not recorded["flips"]


def test_a_resume_into_another_network_or_tile_size_is_refused(nuclei, tmp_path):
    """The weights cannot show padding or dropout, and a left-out tile_size planned another tile: both went on."""
    train, _ = nuclei
    run(train, 1, tmp_path)
    last = tmp_path / "last.safetensors"
    with pytest.raises(ValueError, match=r"another network or tiles \(padding 'valid' -> 'same'\)"):
        fit(UNet(depth=2, base_channels=4, dropout=0.5, padding="same"), train, recipe="paper", epochs=2,
            tile_size=44, lr=0.01, tiles_per_epoch=2, batch_size=1, seed=3, checkpoint_dir=tmp_path, resume=last)
    with pytest.raises(ValueError, match=r"tile_size 44 -> 60"):
        run(train, 2, tmp_path, resume=last, tile_size=60)
    run(train, 2, tmp_path, resume=last)


def test_cpu_training_runs_channels_last_with_the_same_numbers(nuclei):
    """fit trains in channels_last on the CPU (measured faster there): the model is left in it, and its
    losses equal those of the same run in the plain layout."""
    from unet_fast import train as train_module

    train, _ = nuclei
    options = dict(recipe="default", epochs=2, tile_size=44, tiles_per_epoch=4, batch_size=2, seed=1)
    model = tiny_net(dropout=0.0)
    fast = fit(model, train, **options)
    assert model.encoder[1].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.encoder[1].conv1.weight.is_contiguous()
    plain_model = tiny_net(dropout=0.0)
    original = train_module.training_memory_format
    train_module.training_memory_format = lambda device: torch.contiguous_format
    try:
        plain = fit(plain_model, train, **options)
    finally:
        train_module.training_memory_format = original
    assert plain_model.encoder[1].conv1.weight.is_contiguous()
    np.testing.assert_allclose([r["train_loss"] for r in fast.history], [r["train_loss"] for r in plain.history],
                               rtol=1e-4)


def test_resume_continues_exactly(nuclei, tmp_path):
    """2 epochs, then resume for 2 more == 4 epochs straight (dropout, augmentation and momentum)."""
    train, _ = nuclei
    straight, _ = run(train, 4, tmp_path / "straight")
    run(train, 2, tmp_path / "resumed")
    torch.manual_seed(1234)            # the resumed process's RNG is elsewhere; the checkpoint restores it
    resumed, result = run(train, 4, tmp_path / "resumed", resume=tmp_path / "resumed" / "last.safetensors")
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]


def test_checkpoint_holds_optimizer_state_and_history(nuclei, tmp_path):
    train, _ = nuclei
    model, result = run(train, 2, tmp_path)
    assert result.checkpoint == tmp_path / "last.safetensors"
    state = load_checkpoint(result.checkpoint)
    assert state["epoch"] == 2 and len(state["history"]) == 2 and state["seed"] == 3
    assert state["model_config"]["depth"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(state["model_state"][key], value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    load_checkpoint(result.checkpoint, model, optimizer)
    assert optimizer.param_groups[0]["momentum"] == 0.99 and optimizer.param_groups[0]["lr"] == 0.01
    assert all(optimizer.state[p]["momentum_buffer"].abs().sum() > 0 for p in model.parameters())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]     # no temporary files left


def test_resume_refuses_other_files_and_other_seeds(nuclei, tmp_path):
    train, _ = nuclei
    run(train, 1, tmp_path)
    with pytest.raises(ValueError, match="seed"):
        run(train, 2, tmp_path, resume=tmp_path / "last.safetensors", seed=4)
    from unet_fast import save_model
    save_model(tiny_net(), tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not a unet_fast checkpoint"):
        run(train, 2, tmp_path, resume=tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        run(train, 2, tmp_path, resume=tmp_path / "missing.safetensors")



def test_resume_refuses_to_switch_bf16_autocast(nuclei, tmp_path):
    """amp (bf16 autocast) was not recorded: a resume could switch it silently, and the run went on otherwise than
    it began. The checkpoint records it; a resume that changes it is refused either way, the same value goes on,
    and a checkpoint from before it was recorded (no "amp") resumes as before."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    train, _ = nuclei
    run(train, 1, tmp_path / "plain")
    run(train, 1, tmp_path / "amp", amp=True)
    assert load_checkpoint(tmp_path / "plain" / "last.safetensors")["amp"] is False
    assert load_checkpoint(tmp_path / "amp" / "last.safetensors")["amp"] is True
    with pytest.raises(ValueError, match=r"trained without bf16 autocast \(amp=False\), got amp=True.*leave out --amp"):
        run(train, 2, tmp_path / "plain", resume=tmp_path / "plain" / "last.safetensors", amp=True)
    with pytest.raises(ValueError, match=r"trained with bf16 autocast \(amp=True\), got amp=False.*add --amp"):
        run(train, 2, tmp_path / "amp", resume=tmp_path / "amp" / "last.safetensors")
    _, result = run(train, 2, tmp_path / "amp", resume=tmp_path / "amp" / "last.safetensors", amp=True)
    assert len(result.history) == 2
    path = tmp_path / "plain" / "last.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    del metadata["amp"]                                                   # as written before 2026-11-27
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata)
    assert load_checkpoint(tmp_path / "old.safetensors")["amp"] is None
    _, result = run(train, 2, tmp_path / "plain", resume=tmp_path / "old.safetensors", amp=True)
    assert len(result.history) == 2


def test_resume_keeps_the_runs_best_metric_and_counts_its_epochs(nuclei, tmp_path):
    """best_metric was not recorded: a resume could choose the best model by another measure than the run began
    with (its best.safetensors then neither's best), and a resume asking for fewer epochs than were done returned
    without a word. The run's measure goes on where none is given, another is refused, and so are too few epochs."""
    train, val = nuclei
    run(train, 1, tmp_path, val_data=val, best_metric="iou", progress=False)
    assert load_checkpoint(tmp_path / "last.safetensors")["best_metric"] == "iou"
    last = tmp_path / "last.safetensors"
    with pytest.raises(ValueError, match="chose its best model by 'iou', got best_metric='f1'"):
        run(train, 2, tmp_path, resume=last, val_data=val, best_metric="f1", progress=False)
    _, result = run(train, 2, tmp_path, resume=last, val_data=val, progress=False)   # none given: the run's
    assert len(result.history) == 2 and load_checkpoint(last)["best_metric"] == "iou"
    assert load_model(tmp_path / "best.safetensors").metadata["best_metric"] == "iou"
    with pytest.raises(ValueError, match="has trained 2 epoch.*give at least 2"):
        run(train, 1, tmp_path, resume=last, val_data=val, progress=False)


def test_resume_of_a_run_from_before_dice_keeps_it_without(nuclei, tmp_path):
    """A checkpoint whose recipe has no dice trained with cross-entropy alone: resuming it with a recipe that
    adds a Dice term (as the default recipe does) was accepted, and the run went on with another loss; it is
    refused, as any other changed training value, and with dice 0 it goes on."""
    import dataclasses
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from unet_fast.recipes import get_recipe

    train, _ = nuclei
    run(train, 1, tmp_path)
    path = tmp_path / "last.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    recipe = json.loads(metadata["recipe"])
    assert recipe.pop("dice") == 0.0                                     # the paper's recipe
    save_file(tensors, str(path), {**metadata, "recipe": json.dumps(recipe)})
    with pytest.raises(ValueError, match=r"other values \(dice 0.0 -> 1.0\)"):
        run(train, 2, tmp_path, resume=path, recipe=dataclasses.replace(get_recipe("paper"), dice=1.0))
    _, result = run(train, 2, tmp_path, resume=path)
    assert len(result.history) == 2


def test_validation_and_logs(nuclei, tmp_path):
    train, val = nuclei
    result = fit(tiny_net(), train, val, epochs=2, tile_size=44, tiles_per_epoch=2, log_dir=tmp_path)
    row = result.history[-1]
    assert {"train_loss", "val_loss", "val_iou", "val_object_f1", "seconds"} <= set(row)
    assert 0 <= row["val_iou"] <= 1 and 0 <= row["val_object_f1"] <= 1
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,train_loss,val_loss,val_iou,val_object_f1") and len(lines) == 3
    assert json.loads((tmp_path / "history.json").read_text())[1]["epoch"] == 2
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_scores_a_perfect_prediction(nuclei):
    """A model that reads the target off its input scores IoU 1 and F1 1, loss near 0."""
    _, labels = synthetic_nuclei(1, 64, seed=5)
    image = separate_touching(labels[0]).astype(np.float32)     # the image is the target itself
    val = ArrayDataset([image], labels, normalization=Normalization(mode="none"))

    class Oracle(torch.nn.Module):
        depth, padding, in_channels, num_classes = 1, "same", 1, 2

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(20.0))

        def forward(self, x):
            return torch.cat([1 - x, x], 1) * self.scale

    scores = evaluate(Oracle(), val)
    # the separated target's objects, their borders given back, against the labelled instances; the outlines
    # smoothed and the bridged borders split again at the cores, as segment --output instances does
    with torch.no_grad():
        probability = torch.softmax(Oracle()(torch.from_numpy(image)[None, None])[0], 0)[1].numpy()
    objects = label_instances(foreground_mask(probability, InstanceOptions()), probability=probability)
    assert objects.max() == len(np.unique(labels[0])) - 1
    assert scores["iou"] == pytest.approx(foreground_iou(objects > 0, labels[0] > 0)) and scores["iou"] > 0.95
    assert scores["object_f1"] == 1.0 and scores["loss"] < 1e-3


def test_amp_bf16_runs(nuclei):
    train, _ = nuclei
    result = fit(tiny_net(), train, epochs=1, tile_size=44, tiles_per_epoch=1, amp=True)
    assert np.isfinite(result.history[0]["train_loss"])


def test_tile_dataset_input(nuclei):
    """Any dataset of (image, target, weights) tiles; targets larger than the output are centre-cropped."""
    x = torch.randn(3, 1, 44, 44)
    target = torch.randint(0, 2, (3, 44, 44))
    weights = torch.ones(3, 44, 44)
    tiles = torch.utils.data.TensorDataset(x, target, weights)
    result = fit(tiny_net(), tiles, epochs=1, batch_size=3)
    assert result.history[0]["step"] == 1


def test_bad_arguments(nuclei):
    train, _ = nuclei
    with pytest.raises(ValueError, match="epochs"):
        fit(tiny_net(), train, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        fit(tiny_net(), train, epochs=1, lr=0)
    with pytest.raises(ValueError, match="tile_size: tile size 45"):
        fit(tiny_net(), train, epochs=1, tile_size=45)
    with pytest.raises(TypeError, match="train_data"):
        fit(tiny_net(), [1, 2], epochs=1)
    with pytest.raises(ValueError, match="augment"):
        fit(tiny_net(), train, epochs=1, augment="elastic")
    three = ArrayDataset([np.zeros((64, 64), np.float32)], [np.full((64, 64), 2)], num_classes=3,
                         label_kind="semantic")
    for data in (dict(train_data=three), dict(train_data=train, val_data=three)):  # before any image is read
        with pytest.raises(ValueError, match="num_classes=3 but the model gives 2 classes"):
            fit(tiny_net(), **data, epochs=1)


DDP_SCRIPT = """
import sys, torch
from unet_fast import UNet
from unet_fast.data import ArrayDataset, synthetic_nuclei
from unet_fast.instances import label_instances
from unet_fast.metrics import foreground_iou
from unet_fast.normalization import Normalization
from unet_fast.weights import separate_touching
from unet_fast.train import fit
import torch.distributed as dist
images, labels = synthetic_nuclei(2, 48, seed=0)
torch.manual_seed(int(__import__("os").environ["RANK"]))     # different initial weights: DDP must sync them
model = UNet(depth=2, base_channels=4, dropout=0.0)
result = fit(model, ArrayDataset(images, labels), ArrayDataset(images[:1], labels[:1]), epochs=2,
             recipe="paper", tile_size=44, tiles_per_epoch=4, lr=0.01, device="cpu",
             checkpoint_dir=sys.argv[1] + "/ckpt")
rank = __import__("os").environ["RANK"]
torch.save({"state": model.state_dict(), "history": result.history}, f"{sys.argv[1]}/rank{rank}.pt")
"""


# Each DDP test's torchrun is started ahead, beside the suite (tests/ahead.py), in a folder of its own that the
# script gets as its first argument; the test then checks what the ranks wrote. Rendezvous on 127.0.0.1, not
# `--standalone`: that one advertises the hostname, and where the hostname does not resolve (CI sandboxes)
# every rank waits for ever. The port is picked as the launcher starts, not when the command is built (a
# minute or more before, time for another process to take it).
TORCHRUN = """
import os, socket, sys
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          "--master-addr=127.0.0.1", f"--master-port={port}", *sys.argv[1:]])
"""


def _torchrun(name, script_text, *args):
    """A command run ahead: ``script_text`` in 2 gloo processes under torchrun, given its folder, then ``args``."""
    def build(folder):
        script = Path(folder) / "script.py"
        script.write_text(script_text)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
        return [sys.executable, "-c", TORCHRUN, str(script), folder, *args], {"env": env, "cwd": folder}, None
    return ahead.Command(name, build, timeout=240)


def _ranks_wrote(command) -> Path:
    """The folder of ``command``'s run; the test fails with torchrun's output if it failed or hung."""
    run = command.result()
    assert run.done.returncode == 0, f"torchrun failed:\n{run.done.stdout}\n{run.done.stderr}"
    return Path(run.folder)


DDP_TWO = _torchrun("ddp-two-processes", DDP_SCRIPT)


@pytest.mark.slow
@DDP_TWO.mark
def test_ddp_two_cpu_processes_end_identical():
    out = _ranks_wrote(DDP_TWO)
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    assert a["history"] == [dict(row, seconds=a["history"][i]["seconds"], elapsed=a["history"][i]["elapsed"])
                            for i, row in enumerate(b["history"])]     # the same but for each rank's clock
    assert a["history"][-1]["step"] == 4          # 4 tiles per epoch shared by 2 ranks: 2 steps each
    assert (out / "ckpt" / "last.safetensors").is_file()


def test_lr_schedule_cosine_decays(nuclei):
    train, _ = nuclei
    result = fit(tiny_net(), train, recipe="paper", epochs=2, tile_size=44, tiles_per_epoch=2, lr=0.01,
                 lr_schedule="cosine")
    assert 0 < result.history[-1]["lr"] < result.history[0]["lr"] < 0.01
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(tiny_net(), train, epochs=1, lr_schedule="step")


DDP_RESUME_SCRIPT = """
import os, random, sys, numpy as np, torch, torch.distributed as dist
from unet_fast import UNet
from unet_fast.data import ArrayDataset, synthetic_nuclei
from unet_fast.instances import label_instances
from unet_fast.metrics import foreground_iou
from unet_fast.train import fit
out, rank = sys.argv[1], int(os.environ["RANK"])
dist.init_process_group("gloo")          # one group for the three runs (fit leaves it as it found it)
images, labels = synthetic_nuclei(2, 48, seed=0)

def grey(image, target, weights, generator=None):   # a user augmentation drawing from numpy and random
    return image * (1 + 0.1 * np.random.rand()) + 0.1 * random.random(), target, weights

def train(name, epochs, resume=None):
    torch.manual_seed(10 + rank), np.random.seed(20 + rank), random.seed(30 + rank)  # each rank its own
    model = UNet(depth=2, base_channels=4, dropout=0.5)                             # dropout: torch's RNG
    if resume:                         # a new process starts elsewhere: the checkpoint must restore all
        torch.manual_seed(99), np.random.seed(99), random.seed(99)
    fit(model, ArrayDataset(images, labels), epochs=epochs, tile_size=44, tiles_per_epoch=4, lr=0.01,
        device="cpu", augment=grey, checkpoint_dir=f"{out}/{name}", resume=resume)
    torch.save({"state": model.state_dict(), "torch": torch.get_rng_state(),
                "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                "python": torch.tensor(random.getstate()[1])}, f"{out}/{name}.rank{rank}.pt")

train("straight", 2)
train("first", 1)
train("resumed", 2, resume=f"{out}/first/last.safetensors")
dist.destroy_process_group()
"""


DDP_RESUME = _torchrun("ddp-resume", DDP_RESUME_SCRIPT)


@pytest.mark.slow
@DDP_RESUME.mark
def test_ddp_resume_restores_every_ranks_random_state():
    """2 epochs straight == 1 epoch + resume, on 2 ranks whose random states differ: same weights,
    and each rank ends with the random states (torch, numpy, random) of the uninterrupted run."""
    out = _ranks_wrote(DDP_RESUME)
    assert len(load_checkpoint(out / "first" / "last.safetensors")["rng"]) == 2
    for rank in range(2):
        straight = torch.load(out / f"straight.rank{rank}.pt", weights_only=True)
        resumed = torch.load(out / f"resumed.rank{rank}.pt", weights_only=True)
        for key, value in straight["state"].items():
            assert torch.equal(value, resumed["state"][key]), (rank, key)
        for generator in ("torch", "numpy", "python"):
            assert torch.equal(straight[generator], resumed[generator]), (rank, generator)
    states = [torch.load(out / f"straight.rank{rank}.pt", weights_only=True)["torch"] for rank in range(2)]
    assert not torch.equal(*states)         # the ranks' states did differ


def test_resume_reads_format_1_checkpoints(nuclei, tmp_path):
    """Checkpoints written before per-rank random states (one process's, as rng.cpu) still resume exactly."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    train, _ = nuclei
    straight, _ = run(train, 2, tmp_path / "straight")
    run(train, 1, tmp_path / "first")
    path = tmp_path / "first" / "last.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    del metadata["world_size"]                                           # new in format /2
    tensors = {key: value for key, value in load_file(path).items() if not key.startswith("rng.")}
    save_file({**tensors, "rng.cpu": load_file(path)["rng.0.cpu"]}, tmp_path / "old.safetensors",
              metadata={**metadata, "format": "unet_fast.checkpoint/1"})
    torch.manual_seed(1234)
    resumed, _ = run(train, 2, tmp_path / "resumed", resume=tmp_path / "old.safetensors")
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_resume_from_another_world_size_warns(nuclei, tmp_path):
    from unet_fast.checkpoint import rng_state, save_checkpoint

    train, _ = nuclei
    model, _ = run(train, 1, tmp_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99)
    rank_states = [rng_state(torch.device("cpu")) for _ in range(2)]
    save_checkpoint(tmp_path / "two.safetensors", model, optimizer, epoch=1, seed=3, rng_states=rank_states)
    with pytest.warns(UserWarning, match=r"written by 2 process\(es\) and this run has 1"):
        _, result = run(train, 2, tmp_path, resume=tmp_path / "two.safetensors")
    assert result.history[-1]["epoch"] == 2


FAILING_RANK_SCRIPT = """
import json, os, sys, time
from pathlib import Path
import torch
import unet_fast.train
from unet_fast import UNet
from unet_fast.data import ArrayDataset, synthetic_nuclei
from unet_fast.instances import label_instances
from unet_fast.metrics import foreground_iou
out, where, rank = Path(sys.argv[1]), sys.argv[2], int(os.environ["RANK"])

class Images(ArrayDataset):
    def _load(self, index):
        if where == "data" and rank == 1 and index == 1:
            raise OSError("cannot read img1.tif")
        return super()._load(index)

class Tiles(torch.utils.data.TensorDataset):
    def __getitem__(self, index):
        if where == "step" and rank == 1 and index == 3:       # rank 1's second step
            raise OSError("cannot read tile 3")
        return super().__getitem__(index)

def disk_full(*args, **kwargs):
    raise OSError("No space left on device")

if where == "checkpoint" and rank == 0:
    unet_fast.train.save_checkpoint = disk_full
data = (Tiles(torch.randn(4, 1, 44, 44), torch.randint(0, 2, (4, 44, 44)), torch.ones(4, 44, 44))
        if where == "step" else Images(*synthetic_nuclei(2, 48, seed=0)))
try:
    unet_fast.train.fit(UNet(depth=2, base_channels=4), data, epochs=2, tile_size=44, tiles_per_epoch=4,
                        device="cpu", checkpoint_dir=out / "ckpt")
    report = {"error": None}
except Exception as error:
    report = {"error": type(error).__name__, "message": str(error)}
(out / f"rank{rank}.json").write_text(json.dumps(report))
# Every rank lives on after its error (as in a notebook, or a sweep that catches errors) until all have
# reported: a rank still waiting in a collective for a failed one would wait for ever.
deadline = time.monotonic() + 60
while not all((out / f"rank{r}.json").exists() for r in range(2)) and time.monotonic() < deadline:
    time.sleep(0.05)
(out / f"rank{rank}.waited").write_text(str(time.monotonic() < deadline))
"""


FAILING_RANK = {where: _torchrun(f"ddp-failing-rank-{where}", FAILING_RANK_SCRIPT, where)
                for where in ("data", "checkpoint", "step")}


@pytest.mark.slow
@pytest.mark.parametrize("where, failed, message", [
    pytest.param("data", 1, "OSError: cannot read img1.tif",          # before any collective
                 marks=FAILING_RANK["data"].mark),
    pytest.param("checkpoint", 0, "OSError: No space left on device",  # rank 0 alone writes checkpoints
                 marks=FAILING_RANK["checkpoint"].mark),
    pytest.param("step", 1, None,                                      # in a step: the others are in DDP's all-reduce
                 marks=FAILING_RANK["step"].mark),
])
def test_ddp_a_failed_rank_stops_the_others(where, failed, message):
    out = _ranks_wrote(FAILING_RANK[where])
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert all((out / f"rank{rank}.waited").read_text() == "True" for rank in range(2)), reports
    assert reports[failed]["error"] == "OSError"
    other = reports[1 - failed]
    assert other["error"] is not None, reports
    if message is not None:        # where ranks meet on purpose, the others learn who failed and why
        assert other["error"] == "RankFailedError", reports
        assert f"rank {failed} failed ({message})" in other["message"], reports


def test_time_limit_stops_at_a_step_saves_and_anneals(nuclei, tmp_path):
    """Many epochs, a 0.4 s budget: it stops early with a checkpoint, the rate annealed; resuming
    with the same budget has none left and trains nothing (one more step used to add an epoch row each time),
    without one is refused (the rate would rise again), and with a larger one goes on."""
    train, _ = nuclei
    model = tiny_net()
    result = fit(model, train, recipe="paper", lr_schedule="cosine", epochs=10 ** 4, tile_size=44,
                 tiles_per_epoch=50, lr=0.01, time_limit=0.4, checkpoint_dir=tmp_path, progress=False)
    last = result.history[-1]
    assert result.stopped_early and last["epoch"] < 10 ** 4 and last["step"] >= 1
    assert last["elapsed"] >= 0.4 and last["lr"] < 0.005
    assert load_checkpoint(result.checkpoint)["epoch"] == last["epoch"]
    again = fit(tiny_net(), train, recipe="paper", lr_schedule="cosine", epochs=10 ** 4, tile_size=44,
                tiles_per_epoch=50, lr=0.01, time_limit=0.4, checkpoint_dir=tmp_path, progress=False,
                resume=result.checkpoint)
    assert again.stopped_early and again.history == result.history
    saved = load_checkpoint(result.checkpoint)["model_state"]
    assert {k: v.dtype for k, v in again.model.state_dict().items()} == {k: v.dtype for k, v in saved.items()}
    assert [k for k, v in again.model.state_dict().items() if not torch.equal(v.cpu(), saved[k])] == []
    assert load_checkpoint(result.checkpoint)["time_limit"] == 0.4
    with pytest.raises(ValueError, match="time_limit: .* trained under a time limit of 0.00667 min"):
        fit(tiny_net(), train, recipe="paper", lr_schedule="cosine", epochs=10 ** 4, tile_size=44,
            tiles_per_epoch=50, lr=0.01, checkpoint_dir=tmp_path, progress=False, resume=result.checkpoint)
    longer = fit(tiny_net(), train, recipe="paper", lr_schedule="cosine", epochs=last["epoch"] + 1, tile_size=44,
                 tiles_per_epoch=50, lr=0.01, time_limit=60, checkpoint_dir=tmp_path, progress=False,
                 resume=result.checkpoint)
    assert not longer.stopped_early and longer.history[:-1] == result.history
    assert longer.history[-1]["epoch"] == last["epoch"] + 1


def test_a_resume_writes_the_logs_of_its_checkpoint(nuclei, tmp_path):
    """A kill between an epoch's checkpoint and its logs left history.csv an epoch short for good (a finished run
    resumed trains nothing, and wrote nothing); a resume into another folder had no logs of the epochs before."""
    train, _ = nuclei
    first = fit(tiny_net(), train, recipe="paper", epochs=2, tile_size=44, tiles_per_epoch=2, lr=0.01,
                checkpoint_dir=tmp_path, log_dir=tmp_path, progress=False)
    written = (tmp_path / "history.csv").read_text()
    assert len(written.splitlines()) == 3
    (tmp_path / "history.csv").write_text(written.splitlines(keepends=True)[0] + written.splitlines(keepends=True)[1])
    again = fit(tiny_net(), train, recipe="paper", epochs=2, tile_size=44, tiles_per_epoch=2, lr=0.01,
                checkpoint_dir=tmp_path, log_dir=tmp_path, progress=False, resume=first.checkpoint)
    assert again.history == first.history and (tmp_path / "history.csv").read_text() == written
    elsewhere = tmp_path / "elsewhere"
    fit(tiny_net(), train, recipe="paper", epochs=2, tile_size=44, tiles_per_epoch=2, lr=0.01,
        checkpoint_dir=elsewhere, log_dir=elsewhere, progress=False, resume=first.checkpoint)
    assert (elsewhere / "history.csv").read_text() == written


@pytest.mark.parametrize("metric", ["f1", "loss"])
def test_best_model_is_kept_by_the_chosen_metric(nuclei, tmp_path, metric):
    train, val = nuclei
    result = fit(tiny_net(), train, val, recipe="paper", epochs=3, tile_size=44, tiles_per_epoch=2, lr=0.01,
                 checkpoint_dir=tmp_path, best_metric=metric if metric != "f1" else None, progress=False)
    column, larger = BEST_METRICS[metric]
    values = [row[column] for row in result.history]
    best_epoch = 1 + values.index(max(values) if larger else min(values))
    model = load_model(result.best)
    assert result.best == tmp_path / "best.safetensors"
    assert model.metadata["epoch"] == best_epoch and model.metadata["best_metric"] == metric
    assert model.metadata[column] == pytest.approx(values[best_epoch - 1])


def test_optimizers_and_warm_up(nuclei, tmp_path):
    from safetensors import safe_open

    train, _ = nuclei
    for name, state in [("adam", "exp_avg"), ("adamw", "exp_avg_sq"), ("sgd", "momentum_buffer")]:
        result = fit(tiny_net(), train, epochs=1, tile_size=44, tiles_per_epoch=1, optimizer=name,
                     checkpoint_dir=tmp_path / name, progress=False)
        with safe_open(str(result.checkpoint), framework="pt") as handle:
            assert any(key.endswith("." + state) for key in handle.keys()), name
    result = fit(tiny_net(), train, recipe="paper", epochs=5, tile_size=44, tiles_per_epoch=1, lr=0.01,
                 warmup_steps=4, progress=False)
    assert [row["lr"] for row in result.history] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])


def test_start_up_line_and_progress_from_the_first_step(nuclei, capsys):
    train, val = nuclei
    fit(tiny_net(), train, val, epochs=2, tile_size=44, tiles_per_epoch=2, batch_size=1)
    err = capsys.readouterr().err.splitlines()
    assert err.pop(0) == "preparing 2 training image(s): reading, normalising, weight maps"
    assert err[0].startswith("training U-Net depth 2, base 4, valid padding, ") and "on 2 image(s), 0.00819 Mpx; " \
        "validation on 1 image(s): 44 px tiles (28 px out), batch 1, 2 tiles/epoch, 2 epochs = 4 steps; " \
        "recipe default: adam lr 0.001, cosine with 50 warm-up steps" in err[0] and "cpu, " in err[0]
    assert err[1].startswith("step 1/4 (epoch 1): loss ")
    assert err[2].startswith("epoch 1  step 2  train_loss") and "val_object_f1" in err[2]
    fit(tiny_net(), train, epochs=1, tile_size=44, tiles_per_epoch=1, progress=False)
    assert capsys.readouterr().err == ""


def test_more_bad_arguments(nuclei):
    train, val = nuclei
    for kwargs, error, message in [
        (dict(best_metric="f1"), ValueError, "best_metric needs validation images"),
        (dict(best_metric="dice"), ValueError, "best_metric must be one of"),
        (dict(time_limit=0), ValueError, "time_limit must be a number of seconds > 0, got 0"),
        (dict(optimizer="rmsprop"), ValueError, "optimizer must be one of"),
        (dict(recipe="fast"), ValueError, "recipe must be one of"),
        (dict(recipe=3), TypeError, "recipe must be a recipe name"),
        (dict(warmup_steps=-2), ValueError, "warmup_steps must be an integer >= 0"),
    ]:
        with pytest.raises(error, match=message):
            fit(tiny_net(), train, epochs=1, progress=False, **kwargs)


def test_a_kill_while_writing_the_best_model_leaves_it_and_the_checkpoint_consistent(nuclei, tmp_path, monkeypatch):
    """The checkpoint was written before the best model: a kill between the two left a checkpoint whose
    history has the epoch as the best, and best.safetensors an older model that the resumed run, comparing
    with that history, never replaced. Written best first, a resume redoes the epoch and writes it."""
    from unet_fast import model_file

    train, val = nuclei
    options = dict(recipe="paper", tile_size=48, tiles_per_epoch=4, batch_size=2, lr=0.02, augment=None, seed=0,
                   best_metric="loss", checkpoint_dir=tmp_path, progress=False)
    save_model, calls = model_file.save_model, []

    def killed_at_the_second(*args, **kwargs):
        calls.append(kwargs["epoch"])
        if len(calls) == 2:
            raise SystemExit(143)       # SIGTERM, as unet-fast's handler raises it
        return save_model(*args, **kwargs)

    monkeypatch.setattr(model_file, "save_model", killed_at_the_second)
    with pytest.raises(SystemExit):
        fit(tiny_net(dropout=0.0), train, val, epochs=2, **options)
    assert calls == [1, 2]                 # epoch 2 was the best
    monkeypatch.setattr(model_file, "save_model", save_model)
    result = fit(tiny_net(dropout=0.0), train, val, epochs=2, resume=tmp_path / "last.safetensors", **options)
    losses = [row["val_loss"] for row in result.history]
    assert losses[1] < losses[0]
    assert load_model(result.best).metadata["epoch"] == 2


@pytest.mark.parametrize("key, value, named", [
    ("optimizer.param_groups", "3", "optimizer.param_groups"),
    ("optimizer.param_groups", "[1]", "optimizer.param_groups"),
    ("optimizer.scalars", "[]", "optimizer.scalars"), ("optimizer.scalars", '{"x": 1}', "optimizer.scalars"),
    ("history", '[{"epoch": 1}]', "history")])
def test_a_checkpoint_with_damaged_optimizer_values_or_history_rows_is_refused_by_name(tmp_path, key, value, named):
    """The optimizer's values and the history rows were used unchecked: a TypeError or AttributeError with no
    file named on loading, or a KeyError ('step') when training started; now the ValueError of any damage."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from unet_fast.checkpoint import save_checkpoint

    model = tiny_net()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(1, 1, 44, 44)).sum().backward()
    optimizer.step()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, optimizer, epoch=1, history=[{"epoch": 1, "step": 1}], seed=0)
    load_checkpoint(path, tiny_net(), torch.optim.Adam(tiny_net().parameters()))
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = dict(handle.metadata()), {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(path), {**metadata, key: value})
    with pytest.raises(ValueError, match=f"is damaged or was not written by unet_fast: .*{named}"):
        load_checkpoint(path)


def test_a_run_killed_mid_epoch_resumes_bit_for_bit(nuclei, tmp_path, monkeypatch):
    """The default recipe (Adam, warm-up, cosine, a partial last batch, dropout) with validation, killed in its
    third epoch and resumed from the second's checkpoint: the weights, the history and the random states of the
    uninterrupted run, exactly."""
    from unet_fast import train as train_module

    train, val = nuclei
    options = dict(recipe="default", epochs=4, tile_size=44, tiles_per_epoch=5, batch_size=2, warmup_steps=2,
                   seed=3, progress=False)
    straight = tiny_net()
    expected = fit(straight, train, val, checkpoint_dir=tmp_path / "straight", **options)
    step, steps = train_module.Progress.step, []

    def killed_in_the_third_epoch(self, *args):
        steps.append(None)
        if len(steps) == 8:      # 3 steps an epoch: the third epoch's second step
            raise SystemExit(143)
        return step(self, *args)

    monkeypatch.setattr(train_module.Progress, "step", killed_in_the_third_epoch)
    with pytest.raises(SystemExit):
        fit(tiny_net(), train, val, checkpoint_dir=tmp_path / "killed", **options)
    monkeypatch.setattr(train_module.Progress, "step", step)
    checkpoint = tmp_path / "killed" / "last.safetensors"
    assert load_checkpoint(checkpoint)["epoch"] == 2
    torch.manual_seed(1234)
    resumed = tiny_net(seed=5)
    result = fit(resumed, train, val, checkpoint_dir=tmp_path / "killed", resume=checkpoint, **options)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    timeless = [[{k: v for k, v in row.items() if k not in ("seconds", "elapsed")} for row in run.history]
                for run in (expected, result)]
    assert timeless[0] == timeless[1]
    states = [load_checkpoint(tmp_path / name / "last.safetensors")["rng"][0] for name in ("straight", "killed")]
    for name in ("cpu", "numpy", "python"):
        assert torch.equal(states[0][name], states[1][name]), name


def test_a_diverged_epoch_stops_training_and_keeps_the_last_good_checkpoint(nuclei, tmp_path, monkeypatch):
    """NaN weights after an epoch: fit stops there with TrainingDiverged naming the epoch and the checkpoint to
    resume from; that epoch is neither validated, nor checkpointed over the last good one, nor logged (its
    validation failed with a message about writing outputs, or, before that check, NaN scores were recorded and
    the NaN weights checkpointed)."""
    from unet_fast import train as train_module

    train, val = nuclei
    epoch_of = train_module._train_epoch

    def nan_in_the_second_epoch(run, job, epoch, **kwargs):
        row = epoch_of(run, job, epoch, **kwargs)
        if epoch == 1:
            with torch.no_grad():
                next(run.net.parameters()).view(-1)[3] = float("nan")
        return row

    monkeypatch.setattr(train_module, "_train_epoch", nan_in_the_second_epoch)
    with pytest.raises(train_module.TrainingDiverged, match=r"diverged in epoch 2 .*the checkpoint of epoch 1 .*"
                                                            r"last.safetensors\) is kept"):
        run(train, 3, tmp_path, val_data=val, log_dir=tmp_path / "logs", progress=False)
    kept = load_checkpoint(tmp_path / "last.safetensors")
    assert kept["epoch"] == 1 and len(kept["history"]) == 1
    assert len(json.loads((tmp_path / "logs" / "history.json").read_text())) == 1
    model = tiny_net()
    load_checkpoint(tmp_path / "last.safetensors", model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    monkeypatch.setattr(train_module, "_train_epoch", epoch_of)
    nan_at_once = tiny_net()
    with torch.no_grad():
        next(nan_at_once.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(train_module.TrainingDiverged, match="diverged in epoch 1 .*train again with a lower"):
        fit(nan_at_once, train, epochs=2, recipe="paper", tile_size=44, tiles_per_epoch=2, batch_size=1,
            checkpoint_dir=tmp_path / "other", progress=False)
    assert not (tmp_path / "other" / "last.safetensors").exists()


def _rewritten(path, tensors=None, metadata=None):
    """The checkpoint at ``path`` rewritten with ``tensors(dict)`` and ``metadata(dict)`` editing its contents."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        header, contents = dict(handle.metadata()), {name: handle.get_tensor(name) for name in handle.keys()}
    (tensors or (lambda t: None))(contents)
    (metadata or (lambda m: None))(header)
    save_file(contents, str(path), header)
    return path


def _history(change):
    def edit(metadata):
        rows = json.loads(metadata["history"])
        change(rows[-1])
        metadata["history"] = json.dumps(rows)
    return edit


@pytest.mark.parametrize("tensors, metadata, named", [
    (lambda t: t.update({"model.head.weight": torch.zeros(3, 3)}), None,
     r"weight head.weight of shape \(3, 3\), its network's \(2, 4, 1, 1\)"),
    (lambda t: t.update({"model.head.bias": torch.tensor([0.5, float("nan")])}), None,
     "weight head.bias holding NaN or infinite values"),
    (lambda t: t.update({"model.head.bias": torch.ones(2, dtype=torch.int32)}), None, "weight head.bias of type"),
    (lambda t: t.pop("model.head.bias"), None, r"weights missing \['head.bias'\]"),
    (lambda t: t.update({"optimizer.state.0.exp_avg": torch.zeros(2)}), None,
     r"optimizer state optimizer.state.0.exp_avg of shape \(2,\) .*its parameter's shape: \(4, 1, 3, 3\)"),
    (lambda t: t.update({"optimizer.state.0.step": torch.zeros(1, 2)}), None, "a step is one number"),
    (lambda t: t.update({"optimizer.state.99.exp_avg": torch.zeros(2)}), None,
     "optimizer.state.99.exp_avg' of no parameter"),
    (lambda t: t.update({"rng.0.cpu": torch.zeros(5, dtype=torch.uint8)}), None,
     r"random state rng.0.cpu of shape \(5,\)"),
    (lambda t: t.update({"rng.0.python.scalars": torch.zeros(3, dtype=torch.float64)}), None,
     "random state rng.0.python.scalars"),
    (None, _history(lambda row: row.update(elapsed="12 s")), "its history is not"),
    (None, _history(lambda row: row.update(val_object_f1="0.8")), "its history is not"),
    (None, _history(lambda row: row.pop("epoch")), "its history is not"),
    (None, lambda m: m.update({"optimizer.param_groups": m["optimizer.param_groups"].replace('"eps": 1e-08',
                                                                                            '"eps": "small"')}),
     "its optimizer.param_groups is not"),
])
def test_a_checkpoint_with_damaged_tensors_or_history_values_is_refused_by_name(nuclei, tmp_path, tensors, metadata,
                                                                                named):
    """A weight, an optimizer state or a random state of another shape or type failed in load_state_dict, at the
    first step or in set_rng_state without naming the file ("The size of tensor a (2) must match ...", "too many
    values to unpack"); a history value of another type after a whole epoch; a NaN weight trained an epoch and then
    named the damaged checkpoint as the one to resume from. Now each is refused by name on reading, before any work."""
    train, val = nuclei
    options = dict(recipe="default", tile_size=44, tiles_per_epoch=2, batch_size=1, seed=0, progress=False)
    fit(tiny_net(), train, val, epochs=1, checkpoint_dir=tmp_path, **options)
    path = _rewritten(tmp_path / "last.safetensors", tensors, metadata)
    with pytest.raises(ValueError, match=f"checkpoint '{path}' is damaged or was not written by unet_fast: .*{named}"):
        load_checkpoint(path)
    damaged = path.read_bytes()
    with pytest.raises(ValueError, match=f"checkpoint '{path}' is damaged"):
        fit(tiny_net(), train, val, epochs=2, checkpoint_dir=tmp_path, resume=path, **options)
    assert path.read_bytes() == damaged
