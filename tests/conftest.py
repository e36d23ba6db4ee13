"""Without a CUDA device, run Triton kernels in Triton's interpreter (on CPU tensors).

triton.jit picks interpreter or compiler when a kernel is defined, i.e. when unet_fast is
imported, so the choice is made here, before any test module imports the package. On a GPU
machine nothing changes: the same tests then launch the compiled kernels on CUDA tensors.
An explicit TRITON_INTERPRET in the environment always wins. The interpreter's bf16 arithmetic
is made a GPU's (triton_interpreter.py); where that cannot be done, triton_interpreter.PROBLEM says
why and the bf16 interpreter tests skip with it (triton_device.needs_bf16_interpreter).
"""
import os
import sys

# One OpenMP thread per process, and waiting threads sleep instead of spinning (libgomp reads both when torch
# loads it, here, and every command the tests start inherits them; a value the user set wins). The suite runs
# commands beside its in-process tests on 2 cores, and its tensors are small: two torch threads per process
# fought over the cores and waited on each other. On 2 cores (2026-11-27) the suite took 322-350 s (484-540 s
# of CPU) as it was, 268-289 s (400-425 s) with sleeping waits, 216 s (322 s) with one thread as well; the test
# of TTA over tiles alone took 27 s with two sleeping threads, 6.8 s with two spinning, 1.8 s with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's OpenBLAS reads OMP_NUM_THREADS too, but pytest's plugins (zarr's, ...) import numpy before this file, so
# in this process it started 2 threads, which spin: the interpreter's tl.dot is numpy's matmul, and with a command
# running beside it test_model_triton took 73 s instead of 45 (2026-11-28). Commands the tests start read the
# variable. threadpoolctl is in the test extra; without it (a GPU machine's bare venv) BLAS keeps its threads.
try:
    from threadpoolctl import threadpool_limits
except ImportError:
    pass
else:
    _threads = os.environ["OMP_NUM_THREADS"].split(",")[0]      # OpenMP's form: "4" or nested "4,2"
    _BLAS_LIMIT = threadpool_limits(int(_threads) if _threads.isdigit() else 1, user_api="blas")

# The suite writes Python's bytecode caches whatever PYTHONDONTWRITEBYTECODE says (CI's machine sets it): without
# them pytest rewrote the asserts of all 229 test and helper modules on every run (16 of the 27 s of collection)
# and every command a test starts compiled unet_fast anew (about 1 s each). The caches are gitignored.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import torch  # noqa: E402

import ahead
import triton_interpreter

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

if os.environ.get("TRITON_INTERPRET") == "1":
    triton_interpreter.patch_bf16()
    triton_interpreter.skip_overflow_checks()
    triton_interpreter.patch_language_once_per_launch()
    triton_interpreter.vectorise_custom_reductions()
    triton_interpreter.memoise_numpy_dtypes()
import triton_interpreter_fix  # noqa: E402,F401  (Triton 3.5/3.6 interpreter under numpy >= 2.4)


def names_tests_only(paths, args) -> bool:
    """Whether a command line names tests by id only (``paths``, its positional arguments as pytest parsed them:
    tests/test_train.py::test_ddp_resume...) and gives no -m of its own (``args``, the command line as typed)."""
    asks_marks = any(arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")) for arg in args)
    return bool(paths) and all("::" in path for path in paths) and not asks_marks


def pytest_configure(config):
    # pyproject's addopts leave the slow tests out (-m 'not slow'); a command line naming tests runs what it names
    if names_tests_only(config.args, config.invocation_params.args):
        config.option.markexpr = ""


def pytest_collection_finish(session):
    # not in an xdist worker (README's command runs one per core, gpu.sh's full_tests stage 8): each collects
    # every test, and the commands would run once per worker; there a test runs its command itself
    if not session.config.option.collectonly and not hasattr(session.config, "workerinput"):
        ahead.start(session.items)


def pytest_sessionfinish(session):
    ahead.finish()
