"""unet_fast.tile_graphs' bookkeeping, on the CPU with CUDA's stream and graph calls stubbed (the captures
themselves are checked on a GPU: tests/test_realistic_shapes.py)."""
import contextlib
import threading

import pytest
import torch

from unet_fast import tile_graphs


class _Stream:
    def wait_stream(self, other):
        pass


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA's calls made harmless; a capture runs ``compute`` once and raises what ``capture_error`` holds."""
    state = {"capture_error": None, "captures": 0}

    @contextlib.contextmanager
    def graph(cuda_graph):
        state["captures"] += 1
        if state["capture_error"] is not None:
            raise state["capture_error"]
        yield

    class Graph:
        def replay(self):
            pass

    for name, value in {"Stream": lambda device: _Stream(), "current_stream": lambda device: _Stream(),
                        "stream": lambda s: contextlib.nullcontext(), "synchronize": lambda device: None,
                        "empty_cache": lambda: None, "CUDAGraph": Graph, "graph": graph}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    return state


def test_a_shape_whose_capture_ran_out_of_memory_runs_eagerly_without_trying_again(fake_cuda):
    """H100, 2026-11-26: an 8192^2 image's batch of 25 tiles could not be captured; every later call tried again
    (two eager forwards and a failed capture each) before running eagerly. Now the first call raises, the
    later ones get None at once, until the parameters move."""
    model = torch.nn.Conv2d(1, 1, 1)
    calls = []

    def compute(x):
        calls.append(x.shape)
        return x * 2

    tile_graphs.forget(model)
    fake_cuda["capture_error"] = torch.OutOfMemoryError("simulated: out of memory while capturing")
    with pytest.raises(torch.OutOfMemoryError):
        tile_graphs.tile_graph(model, (25, 1, 8, 8), compute, ("labels",), torch.device("cpu"))
    assert len(calls) == 2 and fake_cuda["captures"] == 1  # the warm-up, then the capture that failed
    assert tile_graphs.tile_graph(model, (25, 1, 8, 8), compute, ("labels",), torch.device("cpu")) is None
    assert len(calls) == 2 and fake_cuda["captures"] == 1 and not tile_graphs.has_tile_graph(model)

    fake_cuda["capture_error"] = None  # another shape still captures; so does this one once the weights move
    assert tile_graphs.tile_graph(model, (12, 1, 8, 8), compute, ("labels",), torch.device("cpu")) is not None
    assert tile_graphs.has_tile_graph(model)
    model.weight.data = model.weight.data.clone()
    assert not tile_graphs.has_tile_graph(model)
    graph = tile_graphs.tile_graph(model, (25, 1, 8, 8), compute, ("labels",), torch.device("cpu"))
    assert graph is not None and fake_cuda["captures"] == 3
    tile_graphs.forget(model)
    assert not tile_graphs.has_tile_graph(model)


def test_graphs_are_kept_per_shape_and_the_least_recently_used_dropped(fake_cuda):
    """Each graph holds its own memory pool: a model keeps MAX_GRAPHS_PER_MODEL of them, the least recently used
    dropped first; has_tile_graph(model, shape) answers for that batch shape only (predict_tiled replays a
    single batch only where a graph of its shape is kept)."""
    model = torch.nn.Conv2d(1, 1, 1)
    tile_graphs.forget(model)
    assert tile_graphs.MAX_GRAPHS_PER_MODEL == 2

    def graph(shape):
        return tile_graphs.tile_graph(model, shape, lambda x: x * 2, ("labels",), torch.device("cpu"))

    first, second = graph((4, 1, 8, 8)), graph((2, 1, 16, 16))
    assert tile_graphs.has_tile_graph(model, (4, 1, 8, 8)) and tile_graphs.has_tile_graph(model, (2, 1, 16, 16))
    assert not tile_graphs.has_tile_graph(model, (1, 1, 8, 8)) and tile_graphs.has_tile_graph(model)
    assert graph((4, 1, 8, 8)) is first and fake_cuda["captures"] == 2  # replayed, now the most recent
    graph((1, 1, 32, 32))                                                # a third shape drops the 16 x 16 one
    assert fake_cuda["captures"] == 3
    assert not tile_graphs.has_tile_graph(model, (2, 1, 16, 16))
    assert tile_graphs.has_tile_graph(model, (4, 1, 8, 8)) and tile_graphs.has_tile_graph(model, (1, 1, 32, 32))
    assert graph((2, 1, 16, 16)) is not second and fake_cuda["captures"] == 4  # captured anew
    tile_graphs.forget(model)


def test_no_pinned_batch_is_allocated_while_a_graph_is_captured(fake_cuda, monkeypatch):
    """In torch.cuda.graph's default mode a capture makes other threads' potentially unsafe CUDA calls fail, and
    predict_tiled's reader thread allocates the next pinned batch (querying the events of earlier copies, or
    calling cudaHostAlloc) while the main thread captures a new batch shape: it now waits for the capture."""
    from unet_fast import inference

    model = torch.nn.Conv2d(1, 1, 1)
    tile_graphs.forget(model)
    in_capture, release = threading.Event(), threading.Event()

    def compute(x):
        if fake_cuda["captures"]:  # the capture, after the eager warm-up
            in_capture.set()
            release.wait(10)
        return x * 2

    allocated = []
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda shape, dtype, pin_memory: allocated.append(pin_memory) or
                        empty(shape, dtype=dtype))  # (no CUDA here to pin with)
    capture = threading.Thread(target=tile_graphs.tile_graph,
                               args=(model, (2, 1, 8, 8), compute, ("labels",), torch.device("cpu")))
    reader = threading.Thread(target=inference._host_batch, args=((2, 1, 8, 8), True))
    capture.start()
    try:
        assert in_capture.wait(10)
        reader.start()
        reader.join(0.2)
        assert reader.is_alive() and not allocated  # waits for the capture
    finally:
        release.set()
        capture.join(10)
    reader.join(10)
    assert allocated == [True] and tile_graphs.has_tile_graph(model, (2, 1, 8, 8))
    inference._host_batch((1, 1, 4, 4), False)  # a CPU device: unpinned, as before
    assert allocated == [True, False]
    tile_graphs.forget(model)
