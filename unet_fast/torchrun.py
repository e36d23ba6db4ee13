"""This process's place in a torchrun job, shared by training (``fit``) and ``unet-fast segment``.

Under torchrun (WORLD_SIZE > 1) the process group is joined here unless the caller already did,
and left by ``leave`` only if joined here; without torchrun the job is one process and every
collective below is a no-op.

The ranks meet first in Python, on the rendezvous store (``_meet``), and only then start the group:
torch's own wait for the other ranks, inside ``init_process_group``, cannot be interrupted, so a rank
that failed before joining (an unreadable model file, killed while starting) left the others deaf to
torchrun's SIGTERM until it killed them 30 s later, and on other machines waiting for 30 min. A rank
whose device cannot work (LOCAL_RANK beyond the GPUs there) says so at the meeting, and every rank stops.
"""
from __future__ import annotations

import importlib
import itertools
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist


class Torchrun:
    """rank, world (size) and device of this process; ``owns_group`` when ``join`` started the group."""

    def __init__(self, rank: int, world: int, device: torch.device, owns_group: bool):
        self.rank, self.world, self.device, self.owns_group = rank, world, device, owns_group

    @classmethod
    def join(cls, device=None, *, backend: str | None = None, timeout: timedelta | None = None) -> "Torchrun":
        """Join the job. device: default CUDA where there is one, else the CPU; "cuda" without an index
        becomes LOCAL_RANK's GPU under torchrun (the current one otherwise). backend: of a group
        started here, default nccl for a CUDA device, gloo otherwise; timeout: its collectives' (torch's
        default: 30 min gloo, 10 min nccl). Environment variables that name no job (RANK without
        WORLD_SIZE, a RANK not below it, text where a number belongs): ValueError naming them."""
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        owns = False
        if dist.is_available() and not dist.is_initialized() and job_size() > 1:
            # torch._dynamo, imported after a process group exists (torch.optim imports it on first
            # use), keeps references to the group past destroy_process_group (torch 2.13): a rank's
            # connections would then stay open after ``leave``, and the other ranks wait in a collective
            # until it exits. So it comes first: here for a group this process starts, and on importing
            # unet_fast.train for one its caller started; not on every import, as it takes about a second.
            importlib.import_module("torch._dynamo")  # not `import torch._dynamo`: torch would be local
            # torchrun's store (a job started otherwise: rank 0 serves it, and waits there for every rank)
            store, rank, world = next(dist.rendezvous("env://"))
            problem = None
            try:
                device = _rank_device(device, world)
            except ValueError as error:
                problem = error
            _meet(store, rank, world, problem)
            backend = backend or ("nccl" if device.type == "cuda" else "gloo")
            store.set_timeout(timeout or (dist.constants.default_pg_nccl_timeout if backend == "nccl"
                                          else dist.constants.default_pg_timeout))
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
            owns = True
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        device = _rank_device(device, world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return cls(rank, world, device, owns)

    def all_reduce(self, values: torch.Tensor, op=None) -> torch.Tensor:
        """``values`` reduced over every rank (sum by default); a copy, on the CPU. Under NCCL (a group the caller
        started for its GPUs) the reduction runs on this rank's GPU, as NCCL reduces no CPU tensor."""
        if self.world > 1:
            nccl = dist.get_backend() == "nccl"
            values = values.to(self.device, copy=True) if nccl else values.clone()
            dist.all_reduce(values, op=op or dist.ReduceOp.SUM)
        return values.cpu()

    def mean(self, total: torch.Tensor, count: int) -> float:
        """Mean of a per-rank sum over ``count`` items per rank, across ranks."""
        return float(self.all_reduce(total)) / max(count * self.world, 1)

    def broadcast(self, value):
        """Rank 0's ``value`` (picklable) on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list | None:
        """``value`` of every rank, in rank order, on rank 0 (None on the others)."""
        if self.world == 1:
            return [value]
        gathered = [None] * self.world if self.rank == 0 else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def leave(self) -> None:
        """Destroy the process group if ``join`` started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _environment_number(name: str) -> int | None:
    """The integer environment variable ``name`` (None where unset or empty); ValueError naming it."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a whole number; torchrun sets it: start the "
                         f"command with torchrun, or unset {name} to run one process") from None


def job_size() -> int:
    """WORLD_SIZE (1 where unset), checked with RANK: a RANK other than 0 without WORLD_SIZE (a launcher that
    sets one and not the other) would make every process a job of its own, each writing the same outputs."""
    world, rank = _environment_number("WORLD_SIZE"), _environment_number("RANK")
    if world is not None and world < 1:
        raise ValueError(f"environment variable WORLD_SIZE={world} must be at least 1 (the number of processes)")
    if rank is not None and world is None and rank != 0:
        raise ValueError(f"environment variable RANK={rank} names a process of a torch.distributed job, but "
                         f"WORLD_SIZE (the number of processes) is not set: start the command with torchrun, which "
                         f"sets both, or unset RANK to run one process")
    if rank is not None and not 0 <= rank < (world or 1):
        raise ValueError(f"environment variable RANK={rank} must be in [0, WORLD_SIZE={world or 1})")
    return world or 1


def _rank_device(device: torch.device, world: int) -> torch.device:
    """``device`` with "cuda" alone made LOCAL_RANK's GPU in a job of ``world`` > 1 processes (the current
    one in a process alone); ValueError where LOCAL_RANK names no GPU of this machine."""
    if device.type != "cuda" or device.index is not None:
        return device
    if world == 1:
        return torch.device("cuda", torch.cuda.current_device())
    local = _environment_number("LOCAL_RANK") or 0
    count = torch.cuda.device_count()
    if not 0 <= local < count:
        raise ValueError(f"environment variable LOCAL_RANK={local}, but this machine has {count} CUDA device(s) "
                         f"(one per process): start torchrun with --nproc-per-node {count} or fewer")
    return torch.device("cuda", local)


_meetings = itertools.count()   # this process's joins: each meets under keys of its own (ranks join alike)


def _meet(store, rank: int, world: int, problem: Exception | None) -> None:
    """Wait in Python, where SIGTERM and Ctrl-C stop the wait, until every rank has reached the store, each
    saying whether its ``problem`` stops it; if one does, every rank raises (its own error, or
    ``ranks.RankFailedError`` naming the others'). The wait is torch's default timeout at most (30 min)."""
    from .ranks import RankFailedError

    key = f"unet_fast/join/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{next(_meetings)}"
    if problem is not None:
        store.set(f"{key}/problem/{rank}", f"{type(problem).__name__}: {problem}"[:1000])
        store.add(f"{key}/problems", 1)
    store.set(f"{key}/at/{rank}", "")
    store.add(f"{key}/arrived", 1)
    limit = dist.constants.default_pg_timeout
    deadline = time.monotonic() + limit.total_seconds()
    while store.add(f"{key}/arrived", 0) < world:
        if time.monotonic() > deadline:
            missing = [other for other in range(world) if not store.check([f"{key}/at/{other}"])]
            raise RuntimeError(f"rank {rank} waited {limit} for every process of the job, and rank(s) "
                               f"{', '.join(map(str, missing))} never joined: see their logs (a process that fails "
                               f"before it joins leaves the others waiting)")
        time.sleep(0.05)
    if problem is not None:
        raise problem
    if store.add(f"{key}/problems", 0):
        failed = [f"rank {other} failed ({store.get(f'{key}/problem/{other}').decode()})" for other in range(world)
                  if store.check([f"{key}/problem/{other}"])]
        raise RankFailedError(f"joining the job: {'; '.join(failed)}; so rank {rank} stops too")
