"""CUDA graphs of the tile forward: one capture per (model, batch shape, output), replayed for every batch.

A forward of the fused network is some 25 kernel launches, each tens of microseconds of Python and
Triton launcher time; for small tiles that host time exceeds the GPU's. A captured graph replays the
whole forward (and the crop, argmax or softmax after it) in one launch. predict_tiled uses it for
batches of the planned shape on CUDA: the tile shape is fixed by the plan, so one capture serves
every full batch of an image, and, cached on the model, every image of a folder.

A graph reads the parameters in place, so it stays right when the weights change in place (an
optimizer step, load_state_dict); it is captured again when the parameters move (new storage, other
device or dtype). Its activations live in a memory pool of their own: the eager warm-up's blocks
are returned to the driver before capturing, so the pool takes their place instead of doubling it.
A shape whose capture (or its eager warm-up) ran out of memory is remembered as such, and runs eagerly
from then on without trying again (each try costs two eager forwards and the failed capture), until the
parameters move. At most MAX_GRAPHS_PER_MODEL graphs are kept per model, the least recently used dropped
first: each holds its activations' pool (40 GiB for the 25 tiles of 1836 px of an 8192^2 image on an H200),
and a folder of images of many sizes would otherwise keep one per tile shape. A graph's input and output
buffers are its own, shared by every call that replays it: one model's graphs are not for several threads
at once (predict_tiled(cuda_graphs=False) there). While a graph is captured, no other thread may call CUDA
(``capturing``).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

_graphs: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
MAX_GRAPHS_PER_MODEL = 2
#: held while a graph is captured: in torch.cuda.graph's default ("global") mode a capture makes the potentially
#: unsafe CUDA calls of every other thread fail; predict_tiled's reader thread allocates its pinned batches
#: under it (a pinned allocation queries the events of earlier copies, or calls cudaHostAlloc)
capturing = threading.Lock()


@dataclass
class TileGraph:
    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_output: object   # what the captured computation returns: a tensor, or a tuple of them

    def __call__(self, batch: torch.Tensor):
        """The captured computation on ``batch``; the result is overwritten by the next replay."""
        self.static_input.copy_(batch, non_blocking=True)
        self.graph.replay()
        return self.static_output


def _parameters_key(model: torch.nn.Module) -> tuple:
    return tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())


def tile_graph(model: torch.nn.Module, shape: tuple, compute: Callable[[torch.Tensor], object],
               key: tuple, device: torch.device) -> TileGraph | None:
    """The graph of ``compute(input)`` (a tensor, or a tuple of them) for inputs of ``shape`` (channels_last,
    float32 on ``device``), cached on ``model`` under ``key`` (what else changes the computation: output kind,
    crop, dtypes); None where capturing it ran out of memory before (the error itself is raised the first time)."""
    cache = _graphs.setdefault(model, {})
    full_key = (tuple(shape), key, _parameters_key(model))
    if full_key in cache:
        cache[full_key] = cache.pop(full_key)  # the most recently used last
        return cache[full_key]
    for stale in [k for k in cache if k[:2] == full_key[:2]]:  # the parameters moved: capture anew
        del cache[stale]
    kept = [k for k in cache if cache[k] is not None]
    for old in kept[:max(0, len(kept) - MAX_GRAPHS_PER_MODEL + 1)]:  # room for this one: its pool replaces theirs
        del cache[old]
    if len(kept) >= MAX_GRAPHS_PER_MODEL:
        torch.cuda.empty_cache()  # the dropped pools back to the driver before the warm-up and capture
    try:
        cache[full_key] = _capture(compute, shape, device)
    except torch.OutOfMemoryError:
        cache[full_key] = None
        raise
    return cache[full_key]


def _capture(compute: Callable[[torch.Tensor], object], shape: tuple, device: torch.device) -> TileGraph:
    static_input = torch.zeros(shape, device=device).contiguous(memory_format=torch.channels_last)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up off the capture: compiles kernels, picks algorithms
        for _ in range(2):
            compute(static_input)
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()  # the warm-up's activations back to the driver, for the graph's own pool
    graph = torch.cuda.CUDAGraph()
    with capturing, torch.cuda.graph(graph):
        static_output = compute(static_input)
    return TileGraph(graph, static_input, static_output)


def has_tile_graph(model: torch.nn.Module, shape: tuple | None = None, key: tuple | None = None) -> bool:
    """True when a graph was captured for ``model`` (for input batches of ``shape`` and of ``key``, tile_graph's
    key, where given) and its parameters have not moved since."""
    parameters = _parameters_key(model)
    return any(k[2] == parameters and graph is not None and (shape is None or k[0] == tuple(shape))
               and (key is None or k[1] == key) for k, graph in _graphs.get(model, {}).items())


def forget(model: torch.nn.Module) -> None:
    """Drop the graphs (and their memory pools) captured for ``model``."""
    _graphs.pop(model, None)
