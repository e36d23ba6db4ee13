"""The log of a training run: one row per epoch (``LOG_COLUMNS``), written as history.csv and
history.json, and drawn as curves.png (loss, and the validation scores), each file atomically; and
``Progress``, what a run says while it runs."""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from .image_io import write_bytes_atomically

LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_iou", "val_object_f1", "lr", "seconds", "elapsed")


def write_logs(log_dir, history: list[dict]) -> None:
    """history.csv, history.json and curves.png in ``log_dir``, each written atomically."""
    log_dir = Path(log_dir)
    columns = [c for c in LOG_COLUMNS if any(c in row for row in history)]
    lines = [",".join(columns)] + [",".join(_csv_value(row.get(c)) for c in columns) for row in history]
    write_bytes_atomically(log_dir / "history.csv", ("\n".join(lines) + "\n").encode())
    write_bytes_atomically(log_dir / "history.json", json.dumps(history, indent=1).encode())
    write_bytes_atomically(log_dir / "curves.png", _plot_curves(history))


def _plot_curves(history: list[dict]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    validated = any(row.get(key) is not None for row in history for key in ("val_iou", "val_object_f1"))
    figure = Figure(figsize=(9, 3.5) if validated else (5, 3.5), dpi=100)   # no empty validation panel
    FigureCanvasAgg(figure)
    losses, scores = figure.subplots(1, 2) if validated else (figure.subplots(1, 1), None)
    epochs = [row["epoch"] for row in history]
    for key, axes in (("train_loss", losses), ("val_loss", losses), ("val_iou", scores), ("val_object_f1", scores)):
        values = [row.get(key) for row in history]
        if axes is not None and any(v is not None for v in values):
            axes.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=key)
    losses.set(xlabel="epoch", ylabel="weighted cross-entropy", title="loss")
    if scores is not None:
        scores.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    for axes in (losses, scores) if validated else (losses,):
        if axes.lines:
            axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _csv_value(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_row(row: dict) -> str:
    """One history row as a line of text."""
    return "  ".join(f"{key} {_csv_value(value)}" for key, value in row.items())


class Progress:
    """What a training run tells its user on stderr: a start-up line, then a bar over the steps (on a
    terminal) or a line after the first step and every ``interval`` seconds (in a log file), and a
    line per epoch. ``enabled=False``: nothing."""

    def __init__(self, enabled: bool, *, bar: bool, interval: float = 15.0, stream=None):
        self.enabled, self.use_bar, self.interval = enabled, bar, interval
        self.stream = stream
        self.bar = None
        self.total, self.started, self.last, self.losses = 0, 0.0, 0.0, []

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stderr
        if self.bar is not None:
            self.bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    def start(self, line: str, *, total: int, done: int) -> None:
        if not self.enabled:
            return
        self._print(line)
        self.total, self.started, self.last, self.first_step = total, time.perf_counter(), time.perf_counter(), done
        if self.use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="step", desc="training", file=self.stream or sys.stderr)

    def step(self, step: int, epoch: int, loss, lr: float) -> None:
        """After each step (``loss`` a tensor: read only when shown, to keep GPUs asynchronous)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0 or step == self.first_step + 1:
                self.bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{lr:.3g}")
            return
        self.losses.append(loss.detach())
        now = time.perf_counter()
        if step != self.first_step + 1 and now - self.last < self.interval:
            return
        mean = float(sum(self.losses) / len(self.losses))
        self.losses, self.last = [], now
        rate = (step - self.first_step) / max(now - self.started, 1e-9)
        left = (self.total - step) / rate if rate > 0 else float("nan")
        self._print(f"step {step}/{self.total} (epoch {epoch + 1}): loss {mean:.4f}, lr {lr:.3g}, "
                    f"{rate:.3g} steps/s, {now - self.started:.0f} s so far, ETA by steps {left:.0f} s")

    def row(self, text: str) -> None:
        if self.enabled:
            self._print(text)

    def note(self, text: str) -> None:
        self.row(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
