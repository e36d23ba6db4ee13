"""This process's place in a torchrun job, shared by training (``fit``) and ``unet-fast segment``.

Under torchrun (WORLD_SIZE > 1) the process group is joined here unless the caller already did,
and left by ``leave`` only if joined here; without torchrun the job is one process and every
collective below is a no-op.
"""
from __future__ import annotations

import importlib
import os

import torch
import torch.distributed as dist


class Torchrun:
    """rank, world (size) and device of this process; ``owns_group`` when ``join`` started the group."""

    def __init__(self, rank: int, world: int, device: torch.device, owns_group: bool):
        self.rank, self.world, self.device, self.owns_group = rank, world, device, owns_group

    @classmethod
    def join(cls, device=None, *, backend: str | None = None) -> "Torchrun":
        """Join the job. device: default CUDA where there is one, else the CPU; "cuda" without an index
        becomes LOCAL_RANK's GPU under torchrun (the current one otherwise). backend: of a group
        started here, default nccl for a CUDA device, gloo otherwise."""
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        owns = False
        if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # torch._dynamo, imported after a process group exists (torch.optim imports it on first
            # use), keeps references to the group past destroy_process_group (torch 2.13): a rank's
            # connections would then stay open after ``leave``, and the other ranks wait in a collective
            # until it exits. So it comes first: here for a group this process starts, and on importing
            # unet_fast.train for one its caller started; not on every import, as it takes about a second.
            importlib.import_module("torch._dynamo")  # not `import torch._dynamo`: torch would be local
            dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
            owns = True
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1
                                  else torch.cuda.current_device())
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
