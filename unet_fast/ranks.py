"""One rank's failure stops every rank of a torch.distributed job, with an error naming it.

Ranks meet only at collectives, so a rank that raises between two of them leaves the others waiting
at the next one. torchrun ends them when the failed process exits, but nothing does when it lives on
(``fit`` called from a notebook, or a sweep that catches errors), and where it exits the others learn
only "Connection closed by peer". So each stretch of work that ranks do apart and that can fail on one
rank alone (reading its data or the resume checkpoint, its validation images, rank 0's checkpoint and
logs, its share of files to segment) runs in ``shared_failures``: it ends in one small collective
where every rank says whether it failed, and if one did, every rank raises. A short process-group
timeout was the alternative: it would have to outlast the slowest legitimate wait, and its error
cannot say which rank failed or why. So the group keeps torch's default timeout (30 min gloo, 10 min
NCCL) as the last resort, for an error inside a training step, where the others are already in
DDP's gradient all-reduce (with gloo they fail at once there, when the failed rank's ``fit`` destroys
the group on its way out; not when the caller owns the group). A CUDA error that poisons the device
(an illegal address, a device-side assert) also leaves the failed rank unable to join the collective.
"""
from __future__ import annotations

import contextlib

import torch.distributed as dist

__all__ = ["RankFailedError", "raise_if_any_failed", "shared_failures"]


class RankFailedError(RuntimeError):
    """Raised on the ranks that did not fail when another rank did (that one raises its own error)."""


def raise_if_any_failed(error: Exception | None, what: str) -> None:
    """Every rank calls this at the same point, with the error it met since the last one (or None);
    if any rank failed, every rank raises. Without a process group it just re-raises ``error``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        reports = [None] * dist.get_world_size()
        try:
            dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}"[:1000])
        except Exception as gather_error:   # the group is gone (a peer tore it down): keep our own error first
            if error is not None:
                raise error from gather_error
            raise
        failed = [f"rank {rank} failed ({report})" for rank, report in enumerate(reports) if report is not None]
        if failed and error is None:
            raise RankFailedError(f"{what}: {'; '.join(failed)}; so rank {dist.get_rank()} stops too")
    if error is not None:
        raise error


@contextlib.contextmanager
def shared_failures(what: str):
    """Run a block that may fail on some ranks only; at its end every rank learns whether any failed,
    and raises if one did. Every rank must enter it, and the block must hold no collective."""
    error = None
    try:
        yield
    except Exception as caught:     # not KeyboardInterrupt: torchrun passes Ctrl-C to every rank
        error = caught
    raise_if_any_failed(error, what)
