"""Tests that only run a command and then read what it wrote start that command early, beside the suite.

The suite runs in one process, which leaves the second core of a 2-core machine mostly idle. The slowest
tests (the Triton static compiles, gpu.sh's dry runs) spend their time in a subprocess whose output they
check afterwards. Marked with ``@COMMAND.mark``, such a command starts when collection ends (conftest.py),
one command at a time on a background thread in the order the tests will want them, while the in-process
tests go on; the test then waits for its result. A command no selected test wants never starts, and one a
test asks for before the thread reached it runs there and then, as it would without this module.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Callable

import pytest


@dataclasses.dataclass
class Run:
    done: subprocess.CompletedProcess   # text output
    folder: str                         # a fresh folder the command had to itself (removed at session end)
    context: object                     # what the builder recorded before the command started


class Command:
    """``build(folder) -> (argv, subprocess options, context)``; run with ``timeout`` seconds (the process
    group is killed after it, and the test fails saying so). ``build`` runs in the thread that queues the
    command or asks for it, never beside a test: it reads the environment and the working folder (which
    tests change) as they are between tests, and the command gets them even if it runs later."""

    def __init__(self, name: str, build: Callable, timeout: float):
        self.name, self._build, self.timeout = name, build, timeout
        self._state = "idle"             # idle -> queued -> running -> done
        self._finished = threading.Event()
        self._prepared: tuple | None = None
        self._run: Run | None = None
        self._error: BaseException | None = None
        self.started_at: float | None = None

    @property
    def mark(self):
        return pytest.mark.ahead(self)

    def result(self) -> Run:
        """The command's run: waited for if the background thread has it, else run here and now."""
        with _lock:
            mine = self._state in ("idle", "queued")
            if mine:
                self._state = "running"
        if mine:
            if self._prepared is None:
                self._prepare()
            self._execute()
        else:
            self._finished.wait()
        if self._error is not None:
            raise self._error
        return self._run

    def _prepare(self) -> None:
        folder = tempfile.mkdtemp(prefix=f"unet_fast-ahead-{self.name}-")
        _folders.append(folder)
        try:
            argv, options, context = self._build(folder)
            options = {"cwd": os.getcwd(), "env": dict(os.environ), **options}
        except BaseException as error:   # handed to the test that asks, as if it had built the command itself
            argv, options, context, self._error = None, None, None, error
        self._prepared = folder, argv, options, context

    def _execute(self) -> None:
        self.started_at = time.monotonic()
        folder, argv, options, context = self._prepared
        try:
            if self._error is not None:
                return
            with _lock:                  # finish() either sees this process or stops it from starting
                if _stopping.is_set():
                    raise RuntimeError(f"{self.name}: not started, the session is ending")
                process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           start_new_session=True, **options)
                _running.add(process)
            try:
                stdout, stderr = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill(process)
                try:
                    stdout, stderr = process.communicate(timeout=10)
                except subprocess.TimeoutExpired:   # a child in a session of its own (torchrun's workers) outlived
                    stdout, stderr = "", "(output held open by a process that outlived the command)"   # the kill
                raise AssertionError(f"{self.name}: no result after {self.timeout} s; its output:\n"
                                     f"{stdout[-3000:]}\n{stderr[-3000:]}") from None
            except BaseException:  # Ctrl-C while the test waited here
                _kill(process)
                raise
            finally:
                with _lock:
                    _running.discard(process)
            self._run = Run(subprocess.CompletedProcess(argv, process.returncode, stdout, stderr), folder, context)
        except BaseException as error:   # handed to the test that asks, as if it had run the command itself
            self._error = error
        finally:
            with _lock:
                self._state = "done"
            self._finished.set()


_lock = threading.Lock()
_stopping = threading.Event()
_running: set = set()
_folders: list[str] = []


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _skipped(item) -> bool:
    """Skipped by a mark whose condition is already known (skip, or skipif with a bool): with a GPU, gpu.sh's
    dry-run tests skip, and their command must not start (gpu.sh would run for real)."""
    return item.get_closest_marker("skip") is not None or any(
        mark.args and mark.args[0] is True for mark in item.iter_markers("skipif"))


def _run_in_turn(commands: list[Command]) -> None:
    for command in commands:
        if _stopping.is_set():
            return
        with _lock:
            mine = command._state == "queued"
            if mine:
                command._state = "running"
        if mine:
            command._execute()


def start(items) -> None:
    """Run, in the order of ``items`` (the selected tests) and one at a time, every command a test of them is
    marked with, on a thread of its own."""
    commands = []
    for item in items:
        if _skipped(item):
            continue
        for mark in item.iter_markers("ahead"):
            command = mark.args[0]
            with _lock:
                if command._state != "idle":
                    continue
                command._state = "queued"
            command._prepare()
            commands.append(command)
    if commands:
        threading.Thread(target=_run_in_turn, args=(commands,), name="ahead", daemon=True).start()


def finish() -> None:
    """At the end of the session: start nothing more, stop what still runs (an interrupted suite), remove the
    folders."""
    with _lock:
        _stopping.set()
        running = list(_running)
    for process in running:
        _kill(process)
    for folder in _folders:
        shutil.rmtree(folder, ignore_errors=True)
