"""pytest-benchmark harness: device-synchronised timing and a shared table of results.

Every benchmark here times a candidate and its baseline in the same run; `report.py`
turns the JSON (pytest benchmarks/ --benchmark-json FILE) into ratio tables.
"""
import platform

import pytest
import torch


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture
def timed(benchmark):
    """benchmark(fn) that waits for the device after every call, so GPU work is counted."""

    def run(fn, *args, device="cpu", rounds=None, warmup_rounds=1, **kwargs):
        def call():
            result = fn(*args, **kwargs)
            synchronize(device)
            return result

        if rounds is None:
            return benchmark(call)
        return benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)

    return run


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["unet_fast_machine"] = machine_description()
    machine_info["torch"] = torch.__version__
    machine_info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
