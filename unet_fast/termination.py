"""Stopping reliably on SIGTERM (kill, a scheduler's time limit, torchrun stopping a job).

``unet-fast`` handles SIGTERM by raising SystemExit(128 + 15), which unwinds like Ctrl-C: atomic
writes remove their temporary files on the way out. But Python ignores an exception raised where
it cannot propagate (a weakref callback, ``__del__``, a finalizer): a signal landing there would be
swallowed and the run would go on to the end. So the handler also records the signal, and
``check()`` raises again wherever work can stop: every training step, every file of segment, every
batch of tiles, and before any output is committed (``image_io.commit``). A run that received
SIGTERM therefore never completes, and exits with 143 whatever happened to the first exception.

Ctrl-C (SIGINT) with ``interrupts=True`` gets the same care: its handler raises KeyboardInterrupt as
Python's own does, and remembers it, so ``check()`` raises KeyboardInterrupt again where the first one was
swallowed (a bare ``except:`` or a finalizer while torch is being imported lost a Ctrl-C, and training ran on).

Without ``handling()`` (the Python API) nothing is installed and ``check()`` does nothing. The module
imports nothing heavy: the command line installs the handler before its first slow import.

A GUI's Cancel uses the same places: within ``cancelled_by(event, exception)`` on a worker thread, ``check()``
on that thread raises ``exception`` once ``event`` is set (the napari plugin's Cancel stops instance labelling
between blocks as it stops the tiles).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

_received: int | None = None    # the signal received while handling() is active, else None
_interrupted = False            # Ctrl-C received while handling(interrupts=True) is active
_ever_received = False          # whether one was received in this process (for quieting shutdown reports)
_thread = threading.local()     # .cancel: (event, exception class) of cancelled_by on this thread


def _handler(signum, frame):
    global _received, _ever_received
    first = _received is None
    _received, _ever_received = signum, True
    # A repeated signal must not interrupt the clean-up of the first (removing a partial file):
    # while an exception is being handled, leave it to that exception and to check().
    if first or sys.exc_info()[1] is None:
        raise SystemExit(128 + signum)


def _interrupt_handler(signum, frame):
    global _interrupted, _ever_received
    first = not _interrupted
    _interrupted, _ever_received = True, True
    if first or sys.exc_info()[1] is None:    # as above: not into the clean-up of the first
        raise KeyboardInterrupt


def requested() -> int | None:
    """The signal number received, or None."""
    return _received


def received_in_this_process() -> bool:
    return _ever_received


def stopping() -> bool:
    """Whether a stopping signal or (with interrupts) Ctrl-C was received."""
    return _received is not None or _interrupted


def check() -> None:
    """Raise SystemExit(128 + signal) if a stopping signal was received, else KeyboardInterrupt if Ctrl-C
    was (even if the first exception was swallowed); a no-op otherwise. Cheap: call it in loops."""
    if _received is not None:
        raise SystemExit(128 + _received)
    if _interrupted:
        raise KeyboardInterrupt
    cancel = getattr(_thread, "cancel", None)
    if cancel is not None and cancel[0].is_set():
        raise cancel[1]()


@contextlib.contextmanager
def cancelled_by(event: threading.Event, exception: type[BaseException]):
    """Within, on this thread: ``check()`` raises ``exception()`` once ``event`` is set (a GUI's Cancel).
    Nests: the innermost applies, and the outer one again after it."""
    outer = getattr(_thread, "cancel", None)
    _thread.cancel = (event, exception)
    try:
        yield
    finally:
        _thread.cancel = outer


@contextlib.contextmanager
def handling(signals=(signal.SIGTERM,), *, interrupts: bool = False, ignore_after_stop: bool = False):
    """Within: ``signals`` raise SystemExit(128 + signum) and are remembered for ``check()``; with
    ``interrupts``, Ctrl-C raises KeyboardInterrupt and is remembered too (unless the process was started
    with it ignored). Outside the main thread (where
    handlers cannot be installed) nothing changes. On the way out the previous handlers return; but with
    ``ignore_after_stop`` (for a process that is the command and now exits) once a signal was received
    further ones are ignored, so that a repeated kill cannot cut the exit short (a death by the signal
    instead of the status 128 + signum)."""
    global _received, _interrupted
    handlers = {signum: _handler for signum in signals}
    # an ignored Ctrl-C stays ignored: a shell without job control starts background jobs (`cmd &` in a
    # script) so, and the Ctrl-C meant for the foreground job must not stop them
    if interrupts and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        handlers[signal.SIGINT] = _interrupt_handler
    previous = {}
    _received, _interrupted = None, False
    try:    # a signal may land while the handlers go in: it raises here, and the ones in place still come out
        for signum, handler in handlers.items():
            with contextlib.suppress(ValueError):    # not the main thread: leave signals alone
                previous[signum] = signal.getsignal(signum)
                signal.signal(signum, handler)
        yield
    finally:
        stopped = stopping()
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_IGN if stopped and ignore_after_stop else handler)
        _received, _interrupted = None, False
