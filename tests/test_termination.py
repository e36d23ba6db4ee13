"""SIGTERM and Ctrl-C stop `unet-fast` reliably: status 143 (128 + SIGTERM) or 130, one line on stderr,
no model or partial file left, never a run that goes on to the end (unet_fast.termination).

Real processes: `python -m unet_fast.cli train` (a tiny net, 200 epochs: minutes if it went on) sent
signals at several moments. "Once the handler is installed" is read from /proc/PID/status (SigCgt), so
that no signal reaches the interpreter before unet_fast's first line, where it could only kill it.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile

import ahead
import unet_fast
from unet_fast import cli, image_io, termination

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")


@pytest.fixture(autouse=True)
def ctrl_c_delivered():
    """Python's own SIGINT handler while each test runs, whatever the suite was started with: a suite started
    in the background (`pytest &` in a script, nohup) ignores SIGINT, and an ignored signal stays ignored
    in every child it starts, so the Ctrl-C these tests send would never arrive."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("sigterm"))


def _write_data(root: Path) -> Path:
    images, labels = unet_fast.synthetic_nuclei(2, 64, seed=0)
    for folder, arrays in (("im", images), ("lb", labels)):
        (root / folder).mkdir(parents=True)
        for i, array in enumerate(arrays):
            tifffile.imwrite(root / folder / f"x{i}.tif", array)
    return root


def _train_argv(data, out, *more):
    return ["train", "--images", str(data / "im"), "--labels", str(data / "lb"), "-o", str(out / "m.safetensors"),
            "--depth", "2", "--base-channels", "2", *more]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("UNET_FAST_DEBUG", None)
    return env


def _start(argv, *prefix):
    return subprocess.Popen([sys.executable, *(prefix or ("-m", "unet_fast.cli")), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask), False once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (signum - 1) & 1)


def _wait_for(condition, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited early ({process.returncode}): {process.stderr.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


SCHEDULES = {   # when to start, and the delays of the signals after that
    "startup imports": ("handler", [0.0]),
    "startup, repeated": ("handler", [0.0, 0.01, 0.05, 0.2, 0.4]),
    "preparing the data": ("preparing", [0.0]),
    "training": ("step", [0.05]),
    "training, repeated": ("step", [0.0, 0.002, 0.01, 0.03, 0.1, 0.3, 0.5]),
}


def _signal_the_schedules(folder):
    """In a process of its own (SIGNALLED, started ahead, beside the suite: tests/ahead.py): one train per
    schedule, all at once (the test takes one run's time), each sent SIGTERM as its schedule says; each run's
    status, stderr (after its awaited line), files and whether its model exists go to report.json."""
    signal.signal(signal.SIGINT, signal.default_int_handler)   # the trains get what ctrl_c_delivered gives tests
    folder = Path(folder)
    runs = {}
    for name, (when, delays) in SCHEDULES.items():
        out = folder / name.replace(" ", "_").replace(",", "")
        runs[name] = (out, _start(_train_argv(folder / "data", out, "--epochs", "200")), when, delays)
    for name, (out, process, when, delays) in runs.items():
        _wait_for(lambda: _catches(process.pid, signal.SIGTERM), process)
        if when != "handler":      # the progress lines: "preparing ...", then "step 1/10000 ..."
            while when not in (line := process.stderr.readline()):
                assert line, f"{name}: no {when!r} line"
        start = time.monotonic()
        for delay in delays:
            time.sleep(max(0.0, start + delay - time.monotonic()))
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
    report = {}
    for name, (out, process, when, delays) in runs.items():
        _, stderr = process.communicate(timeout=60)
        report[name] = dict(status=process.returncode, stderr=stderr, files=_files(out),
                            model=(out / "m.safetensors").exists())
    (folder / "report.json").write_text(json.dumps(report))


def _signalled(folder):
    _write_data(Path(folder) / "data")
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]; import {__name__} as tests; "
            f"tests._signal_the_schedules(sys.argv[1])")
    return [sys.executable, "-c", code, folder], {"env": _env(), "cwd": ROOT}, None


SIGNALLED = ahead.Command("sigterm-at-several-moments", _signalled, timeout=300)


@linux_only
@pytest.mark.slow
@SIGNALLED.mark
def test_sigterm_at_several_moments_of_train_always_exits_143_and_writes_no_model():
    """Signals (single and repeated bursts) during the startup imports, while preparing the data, and
    during training: every run exits 143 with one line on stderr and no model; none exits 0."""
    run = SIGNALLED.result()
    assert run.done.returncode == 0, run.done.stderr
    report = json.loads((Path(run.folder) / "report.json").read_text())
    assert list(report) == list(SCHEDULES)
    for name, result in report.items():
        stderr, files = result["stderr"], result["files"]
        assert result["status"] == 128 + signal.SIGTERM, (name, result["status"], stderr)
        assert stderr.splitlines()[-1:] == ["unet-fast train: terminated (SIGTERM)"], (name, stderr)
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, (name, stderr)
        assert not result["model"], name
        assert not [f for f in files if ".partial" in f], (name, files)
        assert set(files) <= {"m/last.safetensors", "m/history.csv", "m/history.json", "m/curves.png",
                              "m/training-images.json"}, \
            (name, files)     # at most the last finished epoch's checkpoint and logs (for --resume)


# Python ignores an exception raised in a __del__ (or weakref callback): a SIGTERM whose handler runs
# there loses its SystemExit. This one lands there on purpose, at training step 3 of 4 epochs x 2 steps:
# before termination.check(), the run went on to the end, saved the model and exited 0.
SWALLOWED = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)   # as ctrl_c_delivered does: the suite may ignore it
from unet_fast import cli, training_logs

step_before = training_logs.Progress.step

class Swallower:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGNAL)
        for _ in range(100000):     # the handler runs in here: its SystemExit is ignored
            pass

def step(self, step, *args, **kwargs):
    step_before(self, step, *args, **kwargs)
    if step == 3:
        Swallower()

training_logs.Progress.step = step
sys.exit(cli.main(sys.argv[1:]))
"""


def _swallowed_run(signum):
    """A command started ahead, beside the suite (tests/ahead.py): train with SWALLOWED's finalizer sending
    ``signum``, in a folder of its own (the run's output folder is the context)."""
    def build(folder):
        data, out = _write_data(Path(folder) / "data"), Path(folder) / "out"
        out.mkdir()
        more = ("--epochs", "4", "--tiles-per-epoch", "8", "--batch-size", "4", "--no-progress")
        argv = [sys.executable, "-c", SWALLOWED.replace("SIGNAL", signum.name), *_train_argv(data, out, *more)]
        return argv, {"env": _env(), "cwd": ROOT}, out
    return ahead.Command(f"swallowed-{signum.name}", build, timeout=120)


SWALLOWED_RUNS = {signum: _swallowed_run(signum) for signum in (signal.SIGTERM, signal.SIGINT)}


@pytest.mark.parametrize("signum, status, message", [
    pytest.param(signal.SIGTERM, 143, "terminated (SIGTERM)", id="SIGTERM", marks=SWALLOWED_RUNS[signal.SIGTERM].mark),
    pytest.param(signal.SIGINT, 130, "interrupted", id="SIGINT", marks=SWALLOWED_RUNS[signal.SIGINT].mark)])
def test_a_signal_whose_exception_python_ignored_still_stops_the_run(signum, status, message):
    """SystemExit (SIGTERM) or KeyboardInterrupt (Ctrl-C) raised in a finalizer is lost; the run stops anyway.
    A Ctrl-C lost so while torch was being imported let a training run on (seen once in the suite)."""
    run = SWALLOWED_RUNS[signum].result()
    stderr, out = run.done.stderr, run.context
    assert run.done.returncode == status, stderr
    assert stderr == f"unet-fast train: {message}\n"       # no "Exception ignored ... SystemExit/KeyboardInterrupt"
    assert not (out / "m.safetensors").exists()
    assert not [f for f in _files(out) if ".partial" in f]


@linux_only
def test_ctrl_c_during_the_startup_imports_prints_one_line_and_exits_130(data, tmp_path):
    """main() is running (its SIGTERM handler is there) but torch is still being imported."""
    process = _start(_train_argv(data, tmp_path, "--epochs", "200"))
    _wait_for(lambda: _catches(process.pid, signal.SIGTERM), process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr == "unet-fast train: interrupted\n"
    assert _files(tmp_path) == []


IMPORT_ALONE = ahead.Command("import-registers-ops", lambda folder: (
    [sys.executable, "-c", "import torch, unet_fast; print(hasattr(torch.ops.unet_fast, 'crop_concat'))"],
    {"cwd": ROOT, "env": dict(os.environ, PYTHONPATH=str(ROOT))}, None), timeout=120)


@IMPORT_ALONE.mark
def test_importing_the_package_registers_its_ops():
    """``import unet_fast`` alone registers the torch ops (a torch.export'ed program or a user calling
    torch.ops.unet_fast.* relies on it), so the command line's startup imports torch before main():
    a Ctrl-C in that first second or two gets Python's own KeyboardInterrupt (a known window)."""
    done = IMPORT_ALONE.result().done
    assert done.stdout.strip() == "True", done.stderr


# ---- the mechanism, in this process

def test_check_raises_after_a_signal_only_while_handling(tmp_path):
    termination.check()                             # no handler: nothing to do
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        with termination.handling():
            termination._handler(signal.SIGTERM, None)
    assert stop.value.code == 143 and signal.getsignal(signal.SIGTERM) is previous
    termination.check()                             # outside: the API is not affected afterwards
    with termination.handling():
        try:                                         # as if Python had ignored the handler's exception
            termination._handler(signal.SIGTERM, None)
        except SystemExit:
            pass
        with pytest.raises(SystemExit) as again:
            termination.check()
        assert again.value.code == 143
        # nothing is committed any more: the temporary is removed instead
        with pytest.raises(SystemExit):
            image_io.write_bytes_atomically(tmp_path / "out.bin", b"data")
        assert os.listdir(tmp_path) == []
        try:                                         # a repeated signal during clean-up does not interrupt it
            raise SystemExit(143)
        except SystemExit:
            termination._handler(signal.SIGTERM, None)     # returns: the clean-up goes on
    termination.check()


def test_a_sigterm_while_the_handlers_go_in_exits_143_saying_so(monkeypatch, capsys):
    """The flaky end of the subprocess test above, made certain: a SIGTERM landing while handling() installs its
    handlers (as soon as the process catches SIGTERM, which is when that test signals) raised there, before the
    block that reports it: the process exited 143 with nothing on stderr, and in-process the handlers stayed."""
    real = signal.signal
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def landing(signum, handler):
        previous = real(signum, handler)
        if signum == signal.SIGTERM and handler is termination._handler:
            handler(signum, None)          # the signal, at once
        return previous

    monkeypatch.setattr(termination.signal, "signal", landing)
    with pytest.raises(SystemExit) as stop:
        cli.main(["info"])
    monkeypatch.undo()
    assert stop.value.code == 143
    assert capsys.readouterr().err.splitlines() == ["unet-fast info: terminated (SIGTERM)"]
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_a_ctrl_c_is_remembered_only_with_interrupts(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    with termination.handling():                    # the API's default: Ctrl-C is Python's own
        assert signal.getsignal(signal.SIGINT) is previous
    with termination.handling(interrupts=True):
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)                           # the handler runs here, in the main thread
        assert termination.stopping() and termination.requested() is None
        with pytest.raises(KeyboardInterrupt):      # where the first one was swallowed, check() raises again
            termination.check()
        with pytest.raises(KeyboardInterrupt):      # and nothing is committed
            image_io.write_bytes_atomically(tmp_path / "out.bin", b"data")
        assert os.listdir(tmp_path) == []
        try:                                        # a repeated Ctrl-C during clean-up does not interrupt it
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            termination._interrupt_handler(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is previous and not termination.stopping()
    termination.check()                             # outside: nothing remembered


def test_a_ctrl_c_the_process_was_started_ignoring_stays_ignored():
    """A shell without job control starts `unet-fast train ... &` with SIGINT ignored: the Ctrl-C meant for
    the foreground job must not stop it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with termination.handling(interrupts=True):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)                          # a handler would have raised by now
            assert not termination.stopping()
            termination.check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ignored_exception_reports_are_hidden_after_sigterm(monkeypatch):
    """A SystemExit raised where Python ignores it is not reported (termination.check() acts on it), and
    after a SIGTERM nothing Python reports on the way out (zarr's abandoned reads) is printed either."""
    import threading

    reports = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(termination, "_ever_received", False)
    cli._quiet_abandoned_reads()
    hook = sys.unraisablehook

    class Report:
        def __init__(self, error):
            self.exc_value, self.exc_type = error, type(error)

    hook(Report(RuntimeError("a real problem")))
    assert len(reports) == 1                      # passed on while no signal came
    hook(Report(SystemExit(143)))
    monkeypatch.setattr(termination, "_ever_received", True)
    hook(Report(RuntimeError("Event loop is closed")))
    assert len(reports) == 1
