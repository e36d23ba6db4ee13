"""tests/ahead.py: a command started ahead gives the test the same run as one started by the test itself."""
import sys
import threading
import time
from pathlib import Path

import pytest

import ahead


def _writer(text):
    def build(folder):
        argv = [sys.executable, "-c", f"import pathlib; pathlib.Path('out.txt').write_text({text!r}); print('ok')"]
        return argv, {"cwd": folder}, threading.current_thread() is threading.main_thread()
    return build


class _Item:
    def __init__(self, *marks):
        self._marks = marks

    def iter_markers(self, name):
        return [m.mark for m in self._marks if m.mark.name == name]

    def get_closest_marker(self, name):
        return next(iter(self.iter_markers(name)), None)


def test_a_command_nobody_started_runs_when_asked():
    command = ahead.Command("inline", _writer("inline"), timeout=60)
    run = command.result()
    assert run.done.returncode == 0 and run.done.stdout == "ok\n"
    assert (Path(run.folder) / "out.txt").read_text() == "inline" and run.context is True
    assert command.result() is run  # once


def test_commands_of_selected_tests_run_in_the_background_in_their_order():
    first = ahead.Command("first", _writer("1"), timeout=60)
    second = ahead.Command("second", _writer("2"), timeout=60)
    skipped = ahead.Command("skipped", _writer("3"), timeout=60)
    ahead.start([_Item(second.mark), _Item(first.mark, second.mark),
                 _Item(skipped.mark, pytest.mark.skipif(True, reason="a GPU"))])
    deadline = time.monotonic() + 60
    while first._state != "done" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert second._state == first._state == "done"  # both ran without being asked
    assert second.started_at < first.started_at  # in the order the tests come
    assert (Path(first.result().folder) / "out.txt").read_text() == "1"
    assert (Path(second.result().folder) / "out.txt").read_text() == "2"
    assert first.result().context is second.result().context is True  # built here, not beside a test
    assert skipped._state == "idle"  # a skipped test's command never starts


def test_a_command_past_its_timeout_is_killed_with_its_children_and_fails_the_test():
    def build(folder):
        child = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        child += "print('pids', c.pid, flush=True); time.sleep(60)"
        return [sys.executable, "-c", child], {}, None
    command = ahead.Command("sleeper", build, timeout=2)
    with pytest.raises(AssertionError, match=r"sleeper: no result after 2 s; its output:\npids") as failed:
        command.result()
    grandchild = int(str(failed.value).split("pids ")[1].split()[0])
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_an_error_while_building_reaches_the_test():
    def build(folder):
        raise FileNotFoundError("benchmarks/gpu.sh")
    command = ahead.Command("broken", build, timeout=60)
    ahead.start([_Item(command.mark)])
    with pytest.raises(FileNotFoundError, match="gpu.sh"):
        command.result()
