"""Multi-process use under torchrun: joining the job (environment variables, a rank that fails or is stopped
while the others wait), `unet-fast train` with a file one rank cannot read, and segment's shares of the files."""
import json
import os
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ahead
from test_train import TORCHRUN   # the launcher the DDP tests of test_train.py use
import unet_fast
from unet_fast import cli, image_io, segment, torchrun
from unet_fast.synthetic import synthetic_nuclei
from unet_fast.torchrun import Torchrun

ROOT = Path(__file__).resolve().parent.parent


def _environment(**variables):
    """The test process's environment with the torch.distributed variables given (the others removed)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")
    env = {key: value for key, value in os.environ.items() if key not in names}
    env.update({key: str(value) for key, value in variables.items()})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.parametrize("variables, message", [
    ({"RANK": "1"}, r"RANK=1 names a process .* WORLD_SIZE .* is not set: start the command with torchrun"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, r"environment variable WORLD_SIZE='two' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, r"environment variable RANK='x' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, r"RANK=2 must be in \[0, WORLD_SIZE=2\)"),
    ({"WORLD_SIZE": "0"}, r"WORLD_SIZE=0 must be at least 1"),
])
def test_join_names_the_environment_variable_that_names_no_job(monkeypatch, variables, message):
    """int() said "invalid literal for int() with base 10: 'two'"; RANK=2 of 2 went on to a rendezvous that
    failed on MASTER_ADDR; RANK=1 without WORLD_SIZE ran as a job of one process (see the next test)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Torchrun.join("cpu")


def _labelled_folders(folder: Path, count: int = 2) -> list[str]:
    images, labels = synthetic_nuclei(count, 48, seed=0)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i, (image, label) in enumerate(zip(images, labels)):
        image_io.write_image(folder / "images" / f"img{i}.tif", np.asarray(image, np.float32))
        image_io.write_image(folder / "labels" / f"img{i}.tif", np.asarray(label, np.uint16))
    return ["--images", str(folder / "images"), "--labels", str(folder / "labels"), "--depth", "2",
            "--base-channels", "2", "--tile-size", "44", "--tiles-per-epoch", "2", "--batch-size", "1",
            "--epochs", "1", "--no-progress"]


def test_train_with_rank_but_no_world_size_is_refused(tmp_path, monkeypatch, capsys):
    """RANK=1 left in the environment (a launcher that set it and not WORLD_SIZE): fit trained as the one
    process of its job, writing checkpoints, but the command took RANK for its rank and never saved the model:
    exit status 0, no model file and not a word."""
    flags = _labelled_folders(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")
    status = cli.main(["train", *flags, "-o", str(tmp_path / "run" / "model.safetensors")])
    error = capsys.readouterr().err
    assert status == 1, error
    assert "RANK=1" in error and "WORLD_SIZE" in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "run").exists()


def test_rank_device_names_local_rank_beyond_the_gpus(monkeypatch):
    """LOCAL_RANK 3 on a machine of 2 GPUs (--nproc-per-node 4): "CUDA error: invalid device ordinal" from
    set_device, naming neither."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=3, but this machine has 2 CUDA device\(s\).* "
                                         r"--nproc-per-node 2 or fewer"):
        torchrun._rank_device(torch.device("cuda"), 4)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun._rank_device(torch.device("cuda"), 4) == torch.device("cuda", 1)
    assert torchrun._rank_device(torch.device("cuda", 0), 4) == torch.device("cuda", 0)


class _Rank(Torchrun):
    """One rank of a job of ``world`` processes, its collectives those of a rank whose peers all agree (rank 0
    of the job runs first: the others get what it broadcast)."""

    broadcast_by_rank_0 = None

    def __init__(self, rank, world):
        super().__init__(rank, world, torch.device("cpu"), False)

    def all_reduce(self, values, op=None):
        return values.clone()

    def broadcast(self, value):
        if self.rank == 0:
            _Rank.broadcast_by_rank_0 = value
        return _Rank.broadcast_by_rank_0

    def gather(self, value):
        return [value] * self.world


def _segment_as(monkeypatch, rank, world, **arguments):
    monkeypatch.setattr(segment.Torchrun, "join", classmethod(lambda cls, *a, **k: _Rank(rank, world)))
    return segment.run(**arguments).summary.done


def test_segment_parts_take_the_same_files_whatever_their_process_count(tmp_path, monkeypatch):
    """A job array's part 0 under torchrun with 2 processes and part 1 alone: each rank took every
    (parts x world)-th file from part_id x world + rank, so the parts' shares depended on each part's process
    count: of 7 files, 5 were segmented (2 of them twice) and 2 never, each part reporting success."""
    torch.manual_seed(0)
    model = unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2)
    model_file = unet_fast.save_model(model, tmp_path / "model.safetensors",
                                      normalization=unet_fast.Normalization(mode="dtype"))
    (tmp_path / "in").mkdir()
    for i in range(7):
        image_io.write_image(tmp_path / "in" / f"img{i}.tif", np.full((20, 24), 10 * i, np.uint8))
    arguments = dict(inputs=[tmp_path / "in"], output_dir=tmp_path / "out", model=model_file, progress=False,
                     num_parts=2, log=lambda *a, **k: None)
    done = (_segment_as(monkeypatch, 0, 2, part_id=0, **arguments)
            + _segment_as(monkeypatch, 1, 2, part_id=0, **arguments)
            + _segment_as(monkeypatch, 0, 1, part_id=1, **arguments))
    assert sorted(Path(name).name for name in done) == [f"img{i}.tif" for i in range(7)]
    alone = [_segment_as(monkeypatch, 0, 1, part_id=part, **arguments) for part in (0, 1)]
    assert sorted(alone[0]) == sorted(done[:len(alone[0])]) and alone[1] == done[len(alone[0]):]


def test_segment_waits_for_the_slowest_rank_past_torchs_timeout(tmp_path, monkeypatch):
    """segment's ranks meet when each has segmented its share: one done 30 min before another (a share of
    larger images) reached gloo's default timeout there, and the job failed at its summary."""
    joined = {}

    def join(cls, *args, **options):
        joined.update(options)
        return _Rank(0, 1)

    monkeypatch.setattr(segment.Torchrun, "join", classmethod(join))
    (tmp_path / "in").mkdir()
    image_io.write_image(tmp_path / "in" / "img.tif", np.zeros((20, 24), np.uint8))
    torch.manual_seed(0)
    model = unet_fast.UNet(in_channels=1, num_classes=2, depth=2, base_channels=2)
    segment.run([tmp_path / "in"], tmp_path / "out", model, progress=False, log=lambda *a, **k: None)
    assert joined.get("timeout") is not None and joined["timeout"].total_seconds() >= 7 * 24 * 3600


# The commands below start ahead, beside the suite (tests/ahead.py), and the tests then read what they wrote.

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Ranks that join through a store this script serves, as torchrun's agent serves its workers: a rank whose
# peer never comes (it failed before joining) is sent SIGTERM, as torchrun does then; and 2 ranks of which
# one has no GPU for its LOCAL_RANK.
JOINING = r"""
import json, os, signal, subprocess, sys, time
from datetime import timedelta
import torch.distributed as dist
folder, port = sys.argv[1], int(sys.argv[2])
store = dist.TCPStore("127.0.0.1", port, 3, True, timedelta(seconds=60), wait_for_workers=False)
RANK = '''
import json, os, sys, torch, torch._dynamo       # imported (join imports it) before saying "joining"
from unet_fast import termination
from unet_fast.torchrun import Torchrun
torch.cuda.is_available = lambda: True          # a machine of one GPU, as far as choosing one goes
torch.cuda.device_count = lambda: 1
with termination.handling():
    print("joining", flush=True)
    try:
        Torchrun.join(sys.argv[1])
        report = {"error": None}
    except Exception as error:
        report = {"error": type(error).__name__, "message": str(error)}
print(json.dumps(report), flush=True)
'''
def start(rank, world, device, local):
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    return subprocess.Popen([sys.executable, "-c", RANK, device], env=env, stdout=subprocess.PIPE, text=True)

results = {}
alone = start(1, 2, "cpu", 1)                       # its rank 0 never comes
assert alone.stdout.readline().strip() == "joining"
time.sleep(2)                                       # in the wait
alone.send_signal(signal.SIGTERM)
started = time.monotonic()
try:
    alone.wait(timeout=15)
except subprocess.TimeoutExpired:
    alone.kill()
    alone.wait()
results["sigterm"] = {"status": alone.returncode, "seconds": time.monotonic() - started}
os.environ["TORCHELASTIC_RESTART_COUNT"] = "1"      # keys of their own in this store
ranks = [start(rank, 2, "cuda", rank) for rank in range(2)]       # LOCAL_RANK 1 on a machine of one GPU
try:
    outputs = [process.communicate(timeout=60)[0] for process in ranks]
    results["local_rank"] = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
except subprocess.TimeoutExpired:
    results["local_rank"] = "hung"
finally:
    for process in ranks:
        process.kill()
open(os.path.join(folder, "results.json"), "w").write(json.dumps(results))
"""


def _joining(folder):
    return ([sys.executable, "-c", JOINING, folder, str(_free_port())], {"env": _environment(), "cwd": folder},
            None)


JOIN = ahead.Command("torchrun-review-join", _joining, timeout=180)


@pytest.mark.slow
@JOIN.mark
def test_a_rank_waiting_for_the_others_stops_on_sigterm():
    """A rank whose peer failed before joining waited inside init_process_group, where no signal handler runs:
    torchrun's SIGTERM went unheard and it killed the rank 30 s later, saying nothing."""
    run = JOIN.result()
    assert run.done.returncode == 0, run.done.stderr
    results = json.loads((Path(run.folder) / "results.json").read_text())
    assert results["sigterm"]["status"] == 128 + signal.SIGTERM, results
    assert results["sigterm"]["seconds"] < 10, results


@pytest.mark.slow
@JOIN.mark
def test_a_rank_without_a_gpu_for_its_local_rank_stops_every_rank():
    run = JOIN.result()
    assert run.done.returncode == 0, run.done.stderr
    reports = json.loads((Path(run.folder) / "results.json").read_text())["local_rank"]
    assert reports != "hung"
    assert reports[1]["error"] == "ValueError" and "LOCAL_RANK=1, but this machine has 1 CUDA" in \
        reports[1]["message"], reports
    assert reports[0]["error"] == "RankFailedError" and "rank 1 failed (ValueError: environment variable " \
        "LOCAL_RANK=1" in reports[0]["message"], reports


# The end of the scripts below: the command ``argv`` run in-process; the rank's exit status, error lines and seconds
# written to <report><rank>.json; the rank lives on until both have reported.
RUN_AND_REPORT = r"""
errors = io.StringIO()
started = time.monotonic()
with contextlib.redirect_stderr(errors):
    status = cli.main(argv)
(folder / f"{report}{rank}.json").write_text(json.dumps({"status": status, "error": errors.getvalue(),
                                                         "seconds": time.monotonic() - started}))
deadline = time.monotonic() + 60
while not all((folder / f"{report}{r}.json").exists() for r in range(2)) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def _reports(command, report: str) -> tuple[Path, list[dict]]:
    """The folder of a command of ``_under_torchrun`` and what each of its 2 ranks reported (RUN_AND_REPORT's
    ``report``0.json and ``report``1.json)."""
    run = command.result()
    folder = Path(run.folder)
    assert all((folder / f"{report}{rank}.json").exists() for rank in range(2)), run.done.stderr[-3000:]
    return folder, [json.loads((folder / f"{report}{rank}.json").read_text()) for rank in range(2)]


def _under_torchrun(script_text):
    """A command's builder: ``script_text`` run by 2 gloo processes under torchrun, given its folder and the flags of
    2 labelled images written under it."""
    def build(folder):
        script = Path(folder) / "script.py"
        script.write_text(script_text)
        flags = _labelled_folders(Path(folder) / "data")
        env = {**_environment(), "GLOO_SOCKET_IFNAME": "lo"}
        return [sys.executable, "-c", TORCHRUN, str(script), folder, *flags], {"env": env, "cwd": folder}, None
    return build


# `unet-fast train` under torchrun, 2 processes; rank 1 cannot read one image (its node's view of a network
# file system). Each rank reports its exit status and error line, then lives on until both have reported.
TRAIN_READ_FAILURE = r"""
import contextlib, io, json, os, sys, time
from pathlib import Path
import unet_fast.data
from unet_fast import cli
folder, rank = Path(sys.argv[1]), int(os.environ["RANK"])
if rank == 1:
    read = unet_fast.data.read_image
    def unreadable(path, labels=False):
        if Path(path).name == "img1.tif" and not labels:
            raise OSError(f"{path}: Input/output error")
        return read(path, labels)
    unet_fast.data.read_image = unreadable
argv, report = ["train", *sys.argv[2:], "-o", str(folder / "run" / "model.safetensors")], "rank"
""" + RUN_AND_REPORT



TRAIN_READ = ahead.Command("torchrun-review-train-unreadable", _under_torchrun(TRAIN_READ_FAILURE), timeout=120)


@pytest.mark.slow
@TRAIN_READ.mark
def test_train_a_file_one_rank_cannot_read_stops_every_rank_naming_it():
    """The command read the images before fit joined the job: rank 1 failed alone and exited, and rank 0 waited
    for it inside init_process_group, deaf to torchrun's SIGTERM (killed 30 s later without a word; on another
    machine it waited 30 min)."""
    folder, reports = _reports(TRAIN_READ, "rank")
    assert reports[1]["status"] == 2 and "argument --images and --labels:" in reports[1]["error"], reports
    assert "img1.tif: Input/output error" in reports[1]["error"], reports
    assert reports[0]["status"] == 1, reports
    assert "rank 1 failed (BadArgument: " in reports[0]["error"] and "img1.tif: Input/output error" in \
        reports[0]["error"] and len(reports[0]["error"].strip().splitlines()) == 1, reports
    assert not (folder / "run" / "model.safetensors").exists()


# `unet-fast segment` under torchrun, 2 processes; rank 1 cannot read the model file (a path missing on its node):
# read before the ranks met, its failure left rank 0 waiting at the meeting
SEGMENT_MODEL_FAILURE = r"""
import contextlib, io, json, os, sys, time
from pathlib import Path
import unet_fast, unet_fast.model_file
from unet_fast import cli
folder, rank = Path(sys.argv[1]), int(os.environ["RANK"])
model = folder / "segment_model.safetensors"
if rank == 0:
    unet_fast.save_model(unet_fast.UNet(depth=2, base_channels=2), model)
else:
    def missing(path, *args, **kwargs):
        raise FileNotFoundError(f"{path}: no such file")
    unet_fast.model_file.load_model = missing
argv = ["segment", "-i", sys.argv[sys.argv.index("--images") + 1], "-o", str(folder / "segmented"), "-m", str(model),
        "--no-progress"]
report = "segment"
""" + RUN_AND_REPORT


SEGMENT_MODEL = ahead.Command("torchrun-review-segment-unreadable-model", _under_torchrun(SEGMENT_MODEL_FAILURE),
                              timeout=120)


@pytest.mark.slow
@SEGMENT_MODEL.mark
def test_segment_a_model_one_rank_cannot_read_stops_every_rank_naming_it():
    """cmd_segment read -m before the ranks met: rank 1 failed alone, and rank 0 waited at the meeting (until
    torchrun ended it; on another node, for as long as the meeting's limit). Now each rank reads it after they
    met, as segment.run does: rank 0 segments its share and stops naming rank 1."""
    folder, reports = _reports(SEGMENT_MODEL, "segment")
    # rank 1's is a usage error naming -m, as in a single process (it was exit 1 with the error's type)
    assert reports[1]["status"] == 2 and "-m/--model" in reports[1]["error"], reports
    assert "segment_model.safetensors: no such file" in reports[1]["error"], reports
    assert reports[0]["status"] == 1 and "rank 1 failed (BadArgument: " in reports[0]["error"], reports
    assert len(reports[0]["error"].strip().splitlines()) == 1, reports
    assert sorted(path.name for path in (folder / "segmented").iterdir()) == ["img0.tif"]   # rank 0's share
