"""The one GPU run: build, check correctness at real shapes, measure every GPU goal, within a time budget.

    python benchmarks/gpu_run.py [--budget SECONDS] [--dry-run] [--only a,b] [--skip a,b] [OUTDIR]
    (benchmarks/gpu.sh is the same command)

Stages run in order of value, each in its own process with its own cap; a stage that no longer fits
what is left of the budget is skipped, and the summary says so. The CUDA extension builds in the
background from the start (it needs only the CPU) while the Triton kernels are checked on the GPU;
the stages that need the extension wait for it, and run without it if it fails.

Results: OUTDIR (default benchmarks/results/<date>-<gpu>/; --dry-run: a fresh temporary folder)
holds summary.md (one line per GPU goal: PASS / FAIL / not measured, with the ratio and the goal),
results.json (every number) and logs.tar.gz (every log and junit file); when $OUT is set (the
device machine's return folder) those 3 files are copied there too.

Every run first prints its plan: when each stage would start on a GPU and the seconds it would get
if every stage took its estimate (Stage.estimate_s, measured on an H200), by the same rules as the
run itself. --dry-run: the same stages, budget logic and packing on the CPU (Triton's interpreter,
tiny shapes, the CPU build of the extension into a temporary folder); it fails (exit 1, before
running anything) when that plan leaves an essential stage, or one --only names, out of the budget.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
DEFAULT_BUDGET_S = 480
PACK_RESERVE_S = 10  # left for writing the summary and packing whatever else happens
BUILD_ESTIMATE_S = 120  # the CUDA extension's build for one architecture, in the background (run 1: 119 s)

# Files whose tests exercise the GPU kernels: they run on CUDA tensors where a GPU is present.
KERNEL_TESTS = ["tests/test_realistic_shapes.py", "tests/test_conv3x3.py", "tests/test_model_triton.py",
                "tests/test_crop_concat.py", "tests/test_weighted_cross_entropy.py"]
EXTENSION_TESTS = ["tests/test_weighted_cross_entropy.py", "tests/test_crop_concat.py", "tests/test_extension.py"]
# The dry run's tests: the interpreter is slow, so the tests that check the machinery, not every case,
# and for full_tests a few fast tests (what is checked there is the stage, not the suite).
DRY_RUN_SELECTION = ["-k", "interpreter or bad_inputs or dispatch"]
DRY_RUN_SMOKE_TESTS = ["tests/test_geometry.py", "-k", "not brute_force"]


@dataclass
class Stage:
    name: str
    what: str
    estimate_s: float      # expected seconds on an H100/H200 (the plan --dry-run checks)
    cap_s: float           # never more than this
    essential: bool = True  # part of the plan that must fit the budget
    needs_extension: bool = False
    least_s: float | None = None  # a stage worth running in part starts with this much left, else its estimate
    status: str = "not run"
    seconds: float = 0.0
    detail: str = ""

    @property
    def planned_s(self) -> float:
        """The seconds the plan gives it when the budget allows: its estimate, within its cap."""
        return min(self.estimate_s, self.cap_s)


def stages() -> list[Stage]:
    """The stages in order of value. Estimates: seconds on an H200 (2026-11-26 runs 1 and 2, rounded up:
    correctness 118 s, ceilings 9, tune 42 for 51 problems, network 61 with every variant, layers 9
    before the per-layer backward was added, loss 8, augment 10, pipeline 18 when it failed and 41 on
    2026-11-27; the others not yet measured)."""
    return [
        Stage("correctness", "Triton kernels and the network at the paper's shapes vs cuDNN/aten (pytest)", 120, 240),
        Stage("ceilings", "copy bandwidth and bf16 matrix rate", 10, 40),
        Stage("tma_check", "which TMA tiles and decoder wgrad tiles compute right (error, run-to-run races)", 70, 120,
              essential=False),
        Stage("tune", "per-layer kernel tiles: every candidate timed, the fastest written to the table", 75, 200,
              essential=False),  # 42 s measured, before the TMA, split-K and grouped candidates (about 1.7x)
        Stage("network", "network forward, forward+backward: Triton vs cuDNN eager vs torch.compile default", 65, 180),
        Stage("profile", "where the forward's and a forward+backward step's GPU time goes: ours vs torch.compile",
              85, 150,
              essential=False),
        Stage("layers", "per-layer forward and forward+backward, pooled epilogue, direct first layer", 25, 100),
        Stage("extension_checks", "CUDA C++ kernels (loss, crop_concat) vs composites (pytest)", 45, 90,
              needs_extension=True),
        Stage("loss", "weighted cross-entropy GB/s vs copy bandwidth and the composite", 10, 40, needs_extension=True),
        Stage("augment", "elastic deformation, GPU batch vs the CPU peer per sample", 12, 45),
        Stage("pipeline", "predict_tiled vs the bare model forward (images and a large image)", 45, 90),
        Stage("max_autotune", "torch.compile(mode='max-autotune') of the reference: the goals' baseline", 150, 600,
              essential=False),
        Stage("sanitizer", "compute-sanitizer memcheck on a small forward+backward", 60, 120, essential=False),
        Stage("full_tests", "the test suite (README's: slow tests left out)", 360, 600, essential=False,  # H100: 92 % in 319 s; H200: 260 s
              least_s=120),  # capped, its verbose log still names the failures so far
    ]


# ----------------------------------------------------------------------------- environment

def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def versions() -> dict:
    info = {"python": platform.python_version()}
    try:
        import torch
        info.update(torch=torch.__version__, cuda=torch.version.cuda,
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                        memory_gib=round(props.total_memory / 2 ** 30, 1))
    except ImportError:
        info["torch"] = None
    for name in ("triton", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def find_cuda_home() -> tuple[str | None, str]:
    """The CUDA toolkit's root, and how it was found: a root holding both bin/nvcc and the runtime
    library, so the extension links against the toolkit nvcc belongs to."""
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(("CUDA_HOME", Path(os.environ["CUDA_HOME"])))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(("nvcc on PATH (resolved)", Path(os.path.realpath(nvcc)).parents[1]))
        candidates.append(("nvcc on PATH", Path(nvcc).parents[1]))
    candidates += [("/usr/local/cuda", Path("/usr/local/cuda"))]
    candidates += [(str(p), p) for p in sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]
    tried = []
    for how, root in candidates:
        has_nvcc = (root / "bin" / "nvcc").exists()
        libs = [p for sub in ("lib64", "lib", "targets/x86_64-linux/lib") for p in (root / sub).glob("libcudart.so*")]
        tried.append(f"{root} ({how}): nvcc {'yes' if has_nvcc else 'no'}, libcudart {'yes' if libs else 'no'}")
        if has_nvcc and libs:
            return str(root), "; ".join(tried)
    return None, "; ".join(tried) or "no nvcc on PATH and no /usr/local/cuda*"


def install_carried_wheels(run: "Run") -> None:
    """Install the wheels sent along in .whl/ (tools/gpu_wheels.sh: zarr and its dependencies) offline,
    into a folder on this run's PYTHONPATH: what the GPU machine lacks travels with the run."""
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        run.notes.append("no .whl/ folder: tests and benchmarks needing zarr skip or fall back")
        return
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    foreign = [w.name for w in wheels if not ("-py3-none-" in w.name or f"-{tag}-" in w.name)]
    if foreign:  # a partial set would mix versions (zarr without its numcodecs): all or nothing
        run.notes.append(f"carried wheels not installed: {', '.join(foreign)} are not for {tag}")
        return
    usable = wheels
    site = run.out / "site"
    status, seconds = run.run_process(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, usable)], "wheels.log", 120)
    run.notes.append(f"carried wheels ({', '.join(w.name.split('-')[0] for w in usable)}): {status} in {seconds:.0f} s")
    if status == "ok":
        run.env["PYTHONPATH"] = os.pathsep.join([run.env["PYTHONPATH"], str(site)])  # after the repo


# ----------------------------------------------------------------------------- running stages

class Run:
    def __init__(self, out: Path, budget_s: float, dry_run: bool):
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.budget_s = budget_s
        self.dry_run = dry_run
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        if dry_run:
            self.env.update(TRITON_INTERPRET="1", UNET_FAST_BENCH_DRY_RUN="1")
        self.build: subprocess.Popen | None = None
        self.build_started = 0.0
        self.build_state = "not started"
        self.extension_ready = False
        self.notes: list[str] = []

    def left(self) -> float:
        """Seconds of the budget left for stages. A dry run's CPU seconds are not a GPU's: there every stage
        gets its own cap (its plan checked the budget), however slow this machine."""
        if self.dry_run:
            return float("inf")
        return self.deadline - time.monotonic() - PACK_RESERVE_S

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def run_process(self, args: list[str], log_name: str, timeout: float, env=None) -> tuple[str, float]:
        """Run args with its output in logs/<log_name>; (status, seconds): ok / failed (rc) / timeout."""
        started = time.monotonic()
        with open(self.logs / log_name, "a") as log:
            log.write(f"$ {' '.join(args)}\n")
            log.flush()
            process = subprocess.Popen(args, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # its own group: a timeout ends its children too
            try:
                rc = process.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return f"timeout after {timeout:.0f} s", time.monotonic() - started
        seconds = time.monotonic() - started
        return ("ok" if rc == 0 else f"failed (exit {rc})"), seconds

    # -- the extension build, in the background

    def start_build(self, enabled: bool = True) -> None:
        log = open(self.logs / "build.log", "w")
        if not enabled:
            self.build_state = "skipped (--no-build): the extension's stages run without it"
            log.write(self.build_state + "\n")
            log.close()
            return
        env = dict(self.env)
        build_lib = self.out / "build_lib"
        if self.dry_run:
            log.write("dry run: the CPU build of the extension, into a temporary folder (not installed)\n")
            env.pop("FORCE_CUDA", None)
        else:
            import torch
            cuda_home, how = find_cuda_home()
            log.write(f"CUDA_HOME search: {how}\n")
            if cuda_home is None:
                self.build_state = "skipped: no CUDA toolkit with nvcc and libcudart found"
                log.write(self.build_state + "\n")
                log.close()
                return
            major, minor = torch.cuda.get_device_capability(0)
            env.update(CUDA_HOME=cuda_home, FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}",
                       MAX_JOBS=str(os.cpu_count() or 4))
            env["PATH"] = f"{cuda_home}/bin{os.pathsep}{env.get('PATH', '')}"
        log.write(f"ninja: {shutil.which('ninja') or 'not found (serial build)'}; MAX_JOBS={env.get('MAX_JOBS')}\n")
        log.flush()
        args = [sys.executable, "setup.py", "build_ext", "--build-lib", str(build_lib),
                "--build-temp", str(self.out / "build_temp")]
        log.write(f"$ {' '.join(args)}\n")
        log.flush()
        self.build_started = time.monotonic()
        self.build = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.build_log = log
        self.build_state = "running"

    def wait_for_build(self, timeout: float) -> bool:
        """Wait for the background build; install the extension into the package when it succeeded."""
        if self.build is None:
            return self.extension_ready
        try:
            rc = self.build.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        seconds = time.monotonic() - self.build_started
        self.build_log.write(f"exit {rc} after {seconds:.1f} s\n")
        self.build_log.close()
        self.build = None
        if rc != 0:
            self.build_state = f"failed (exit {rc}) after {seconds:.0f} s: the extension stages run without it"
            return False
        built = sorted((self.out / "build_lib" / "unet_fast").glob("_C*.so"))
        if not built:
            self.build_state = f"built in {seconds:.0f} s but no unet_fast/_C*.so found"
            return False
        if self.dry_run:
            self.build_state = f"ok in {seconds:.0f} s (dry run: built, not installed)"
            self.extension_ready = True
            return True
        target = ROOT / "unet_fast" / built[0].name
        staging = target.with_name(target.name + ".partial")
        shutil.copyfile(built[0], staging)
        os.replace(staging, target)  # a process importing now sees the old file or the new one, never half
        self.build_state = f"ok in {seconds:.0f} s"
        self.extension_ready = True
        return True

    def stop_build(self) -> None:
        if self.build is not None:
            _kill_group(self.build)
            self.build_state = f"stopped: still running when the budget ran out ({time.monotonic() - self.build_started:.0f} s)"
            self.build = None


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _xdist_args() -> list[str]:
    try:
        import xdist  # noqa: F401
    except ImportError:
        return []
    return ["-n", str(min(8, os.cpu_count() or 1))]


def pytest_args(tests: list[str], junit: Path, parallel: bool = True, verbose: bool = False) -> list[str]:
    """pytest on ``tests`` (files and options), junit XML to ``junit``, on xdist's workers when ``parallel``;
    ``verbose``: a line per test as it ends, so a run stopped by its cap (no junit file) still names its failures."""
    args = [sys.executable, "-m", "pytest", "-v" if verbose else "-q", "-p", "no:cacheprovider",
            f"--junitxml={junit}", "-rfE"]
    return args + (_xdist_args() if parallel else []) + tests


def tma_check_outcome(run: Run) -> str:
    """The tma_check stage's verdict line (logs/tma_check/verdict.txt)."""
    verdict = run.logs / "tma_check" / "verdict.txt"
    return verdict.read_text().strip() if verdict.exists() else "no verdict (see logs/tma_check.log)"


def run_stage(run: Run, stage: Stage, reserve: float = 0.0) -> None:
    cap = min(stage.cap_s, run.left() - reserve)
    py = sys.executable
    goals = [py, str(BENCH / "gpu_goals.py")]
    dry = ["--dry-run"] if run.dry_run else []
    if stage.name in ("correctness", "extension_checks"):
        tests = KERNEL_TESTS if stage.name == "correctness" else EXTENSION_TESTS
        command = pytest_args(tests + (DRY_RUN_SELECTION if run.dry_run else []), run.logs / f"{stage.name}.xml",
                              parallel=not run.dry_run)
    elif stage.name == "sanitizer":
        if run.dry_run:
            command = [py, str(BENCH / "gpu_sanitize.py"), "cpu"]
        else:
            sanitizer = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
            if not Path(sanitizer).exists():
                stage.status, stage.detail = "skipped", "compute-sanitizer not found"
                return
            command = [sanitizer, "--tool", "memcheck", "--error-exitcode", "1", "--leak-check", "no",
                       py, str(BENCH / "gpu_sanitize.py")]
    elif stage.name == "tune":
        if run.dry_run:  # the tuner times with CUDA events; its harness is checked in the interpreter
            command = pytest_args(["tests/test_tune.py"], run.logs / "tune.xml", parallel=False)
        else:
            command = [py, "-m", "unet_fast.tune", "--write", "--results", str(run.logs / "tune.json"),
                       "--time-limit", str(max(10, int(cap) - 40))]
            shipped = ROOT / "unet_fast" / "ops" / "triton" / "conv3x3_configs.json"
            if shipped.exists():  # the network stage times the table that ships beside the one tuned here
                shutil.copyfile(shipped, run.logs / "conv3x3_configs.shipped.json")
                run.env["UNET_FAST_SHIPPED_TABLE"] = str(run.logs / "conv3x3_configs.shipped.json")
    elif stage.name == "tma_check":
        command = [py, str(BENCH / "gpu_tma_check.py"), str(run.logs / "tma_check"),
                   "--budget", str(max(10, int(cap) - 30))] + dry
    elif stage.name == "full_tests":
        command = (pytest_args(DRY_RUN_SMOKE_TESTS, run.logs / "full_tests.xml", parallel=False) if run.dry_run
                   else pytest_args(["tests/"], run.logs / "full_tests.xml", verbose=True))
    else:
        command = goals + [stage.name, "--out", str(run.out)] + dry
    env = run.env
    if stage.name == "sanitizer":
        env = dict(run.env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # every tensor its own allocation
    if stage.needs_extension and not run.extension_ready:
        env = dict(env, UNET_FAST_DISABLE_EXTENSION="1") if run.dry_run else env
    stage.status, stage.seconds = run.run_process(command, f"{stage.name}.log", cap, env)
    table = ROOT / "unet_fast" / "ops" / "triton" / "conv3x3_configs.json"
    if stage.name == "tune" and table.exists():  # the table the tuner wrote, to commit from the results
        shutil.copyfile(table, run.logs / table.name)
    if stage.name == "tma_check":
        stage.detail = tma_check_outcome(run)
    if stage.status.startswith("timeout"):
        stage.detail = f"cap {cap:.0f} s"
    if run.dry_run and stage.needs_extension and not run.extension_ready:
        stage.detail = "extension not built: ran on the fallbacks"


def ordered(plan: list[Stage], order: list[str]) -> list[Stage]:
    """The stages named in ``order`` first, in that order (a run that needs one measurement before the
    others), then the rest as they were."""
    return sorted(plan, key=lambda s: order.index(s.name) if s.name in order else len(order))


def selected_stages(plan: list[Stage], only: set[str], skip: set[str]) -> list[Stage]:
    return [s for s in plan if not ((only and s.name not in only) or s.name in skip)]


def reserve_for(plan: list[Stage], index: int, selected: list[Stage]) -> float:
    """Seconds kept back from plan[index] for the essential stages after it: a stage that is not essential
    never takes the time they need (an essential stage keeps nothing back)."""
    if plan[index].essential:
        return 0.0
    return sum(s.planned_s for s in plan[index + 1:] if s in selected and s.essential)


def needed_s(stage: Stage) -> float:
    """The seconds ``stage`` needs to start: its estimate, or for a stage worth running in part its least_s."""
    return min(stage.planned_s, stage.least_s if stage.least_s is not None else float("inf"))


def does_not_fit(stage: Stage, left_s: float, reserve_s: float) -> str | None:
    """Why ``stage`` is skipped with ``left_s`` seconds of the budget left and ``reserve_s`` kept back; None
    when it fits."""
    needed = needed_s(stage)
    if left_s - reserve_s >= needed:
        return None
    return (f"needs about {needed:.0f} s, {max(0.0, left_s - reserve_s):.0f} s left of the budget"
            + (f" after {reserve_s:.0f} s kept for later stages" if reserve_s else ""))


@dataclass
class Allotment:
    stage: Stage
    start_s: float
    seconds: float = 0.0
    skipped: str = ""  # why the stage would not run


def allot(plan: list[Stage], selected: list[Stage], budget_s: float, build: bool = True) -> list[Allotment]:
    """The run on a GPU if every stage took its estimate: when each stage would start and what it would
    get, by the same rules as ``execute`` (the stages needing the extension wait for its build)."""
    elapsed = 0.0
    allotments = []
    for index, stage in enumerate(plan):
        if stage not in selected:
            allotments.append(Allotment(stage, elapsed, skipped="not selected (--only/--skip)"))
            continue
        if stage.needs_extension and build:
            elapsed = max(elapsed, BUILD_ESTIMATE_S)
        left, reserve = budget_s - PACK_RESERVE_S - elapsed, reserve_for(plan, index, selected)
        why = does_not_fit(stage, left, reserve)
        if why:
            allotments.append(Allotment(stage, elapsed, skipped=why))
            continue
        allotments.append(Allotment(stage, elapsed, min(stage.planned_s, left - reserve)))
        elapsed += allotments[-1].seconds
    return allotments


def plan_fits(allotments: list[Allotment]) -> bool:
    """Every selected essential stage gets its time."""
    return not any(a.stage.essential and a.skipped and not a.skipped.startswith("not selected")
                   for a in allotments)


def plan_lines(allotments: list[Allotment], budget_s: float, build: bool = True) -> list[str]:
    """The plan as --dry-run (and every run) prints it."""
    lines = [f"== plan for a GPU run with a {budget_s:.0f} s budget (estimates from the H200 runs of 2026-11-26"
             + (f"; the extension builds in the background, about {BUILD_ESTIMATE_S} s)" if build else ")") + ":",
             f"   {'stage':32s} {'estimate':>8s} {'cap':>5s} {'starts':>6s}  allotted"]
    for a in allotments:
        name = a.stage.name + ("" if a.stage.essential else " (if time is left)")
        what = f"skipped: {a.skipped}" if a.skipped else f"{a.seconds:.0f} s"
        if not a.skipped and a.seconds < a.stage.planned_s:
            what += " (capped before its estimate: a part of it)"
        lines.append(f"   {name:32s} {a.stage.estimate_s:6.0f} s {a.stage.cap_s:3.0f} s {a.start_s:4.0f} s  {what}")
    end = max((a.start_s + a.seconds for a in allotments), default=0.0) + PACK_RESERVE_S
    if plan_fits(allotments):
        lines.append(f"== the plan ends at about {end:.0f} s of {budget_s:.0f} s ({PACK_RESERVE_S} s of packing "
                     "included): every essential stage fits")
    else:
        missing = [a.stage.name for a in allotments
                   if a.stage.essential and a.skipped and not a.skipped.startswith("not selected")]
        essential = sum(a.stage.planned_s for a in allotments
                        if a.stage.essential and not a.skipped.startswith("not selected"))
        lines.append(f"== the essential stages need about {essential + PACK_RESERVE_S:.0f} s: over the "
                     f"{budget_s:.0f} s budget ({', '.join(missing)} would be skipped)")
    return lines


def execute(run: Run, plan: list[Stage], selected: list[Stage], build: bool = True) -> None:
    install_carried_wheels(run)
    run.start_build(build)
    for index, stage in enumerate(plan):
        if stage not in selected:
            stage.status = "skipped"
            stage.detail = "not selected (--only/--skip)"
            continue
        reserve = reserve_for(plan, index, selected)
        if stage.needs_extension and run.build is not None:
            waited = time.monotonic()
            run.wait_for_build(timeout=min(run.left() - stage.estimate_s, 300))
            if run.build is not None:
                stage.detail = f"extension build still running after {time.monotonic() - waited:.0f} s wait"
        elif run.build is not None:
            run.wait_for_build(timeout=0)
        why = does_not_fit(stage, run.left(), reserve)  # never in a dry run (Run.left)
        if why:
            stage.status, stage.detail = "skipped", why
            continue
        if stage.needs_extension and not run.extension_ready and stage.name == "extension_checks":
            stage.status = "skipped"
            stage.detail = f"no extension: {run.build_state}"
            continue
        print(f"== {stage.name} ({stage.what}); cap {min(stage.cap_s, run.left() - reserve):.0f} s, "
              f"{run.elapsed():.0f} s elapsed", flush=True)
        run_stage(run, stage, reserve)
        print(f"   {stage.name}: {stage.status} in {stage.seconds:.0f} s {stage.detail}", flush=True)
    if run.build is not None:
        run.wait_for_build(timeout=max(0.0, min(30.0, run.left())))
        run.stop_build()


# ----------------------------------------------------------------------------- results

def load_results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _find(results, stage, name, **match):
    for r in results:
        if r.get("stage") == stage and r.get("name") == name and all(r.get(k) == v for k, v in match.items()):
            if "timing" in r or any(k in r for k in ("gbps", "tflops", "overhead")):
                return r
    return None


def _median(record):
    return record["timing"]["median_ms"] if record and "timing" in record else None


@dataclass
class Goal:
    name: str
    goal: str
    value: float | None = None
    passed: bool | None = None
    detail: str = ""
    unit: str = "x"

    def line(self, dry_run: bool) -> str:
        if dry_run:
            return f"- {self.name}: not measured: dry run (goal {self.goal})"
        if self.value is None:
            return f"- {self.name}: not measured: {self.detail or 'no result'} (goal {self.goal})"
        verdict = "PASS" if self.passed else "FAIL"
        shown = f"{self.value:.2f}{self.unit}" if self.unit == "x" else f"{self.value:g} {self.unit}"
        return f"- {self.name}: {verdict}: {shown} (goal {self.goal}){'; ' + self.detail if self.detail else ''}"


def _ratio_goal(name, goal_text, threshold, results, candidate, baseline, mode, baseline_missing):
    ours = _find(results, "network", candidate, mode=mode)
    base = _find(results, baseline[0], baseline[1], mode=mode)
    goal = Goal(name, goal_text)
    if ours is None or base is None:
        goal.detail = baseline_missing if base is None and ours is not None else "network stage did not finish"
        return goal
    goal.value = _median(base) / _median(ours)
    goal.passed = goal.value >= threshold and ours.get("correct", False)
    goal.detail = (f"{_median(ours):.2f} ms vs {_median(base):.2f} ms per batch of {ours.get('batch')}"
                   + ("" if ours.get("correct", False) else "; OUTPUT CHECK FAILED"))
    return goal


def goals(results: list[dict], stage_status: dict[str, Stage]) -> list[Goal]:
    mat = stage_status.get("max_autotune")
    missing = "max-autotune baseline: " + (f"{mat.status} {mat.detail}".strip() if mat else "not run")
    out = [
        _ratio_goal("network forward vs torch.compile(max-autotune) of the reference", ">= 1.25x", 1.25, results,
                    "triton", ("max_autotune", "compiled_reference_max_autotune"), "forward", missing),
        _ratio_goal("network forward+backward vs torch.compile(max-autotune)", ">= 1.15x", 1.15, results,
                    "triton", ("max_autotune", "compiled_reference_max_autotune"), "forward+backward", missing),
    ]
    fwd = _find(results, "network", "triton", mode="forward")
    goal = Goal("network forward effective TFLOP/s (bf16, batch 8, 572x572)", ">= 400 TFLOP/s, <= 0.75 ms per tile",
                unit="TFLOP/s")
    if fwd:
        goal.value, goal.passed = fwd["tflops"], fwd["tflops"] >= 400 and fwd.get("correct", False)
        goal.detail = f"{fwd['ms_per_tile']:.3f} ms per tile"
    out.append(goal)

    copy = next((r for r in results if r.get("name") == "copy_bandwidth" and "gbps" in r), None)
    loss = _find(results, "loss", "8x2x512x512/fused_default")
    composite = _find(results, "loss", "8x2x512x512/composite")
    bandwidth = Goal("loss forward+backward bandwidth, (8, 2, 512, 512) fp32", ">= 80 % of copy bandwidth", unit="%")
    speed = Goal("loss forward+backward vs the eager composite", ">= 4x")
    if loss and copy:
        bandwidth.value = round(100 * loss["gbps"] / copy["gbps"], 1)
        bandwidth.passed = bandwidth.value >= 80 and loss.get("correct", False)
        bandwidth.detail = f"{loss['gbps']} GB/s of {copy['gbps']} GB/s"
    if loss and composite:
        speed.value = _median(composite) / _median(loss)
        speed.passed = speed.value >= 4 and loss.get("correct", False)
        speed.detail = f"{_median(loss):.3f} ms vs {_median(composite):.3f} ms"
    out += [bandwidth, speed]

    for name, label in (("images_512", "a set of 512x512 images"), ("large_image", "one large image")):
        record = _find(results, "pipeline", name)
        goal = Goal(f"predict_tiled overhead over the bare model forward, {label}", "<= 10 %", unit="%")
        if record:
            goal.value = round(100 * record["overhead"], 1)
            goal.passed = record["overhead"] <= 0.10
            goal.detail = (f"{record.get('images_per_s') or record.get('tiles_per_s')} "
                           f"{'images' if 'images_per_s' in record else 'tiles'}/s")
        out.append(goal)

    record = _find(results, "augment", "unet_fast_batch")
    goal = Goal("elastic deformation per sample, GPU batch of 64 vs the CPU call", ">= 100x")
    if record:
        goal.value = record["speedup_per_sample"]
        goal.passed = goal.value >= 100 and record.get("correct", False)
        goal.detail = f"CPU peer: {record['peer']}"
    out.append(goal)
    return out


def network_table(results: list[dict]) -> list[str]:
    rows = [r for r in results if r.get("stage") in ("network", "max_autotune") and "timing" in r]
    if not rows:
        return []
    lines = ["| network | mode | ms / batch | ms / tile | TFLOP/s | peak GiB | error (cuDNN's) vs fp32 | vs cuDNN eager |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for mode in ("forward", "forward+backward"):
        eager = _find(results, "network", "reference_eager_cudnn", mode=mode)
        for r in sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["timing"]["median_ms"]):
            ratio = f"{_median(eager) / _median(r):.2f}x" if eager else "-"
            lines.append(f"| {r['name']} | {mode} | {_median(r):.2f} | {r['ms_per_tile']:.3f} | {r['tflops']} | "
                         f"{r.get('peak_memory_gib', '-')} | {r['error']:.1e} ({r['cudnn_error']:.1e})"
                         f"{'' if r.get('correct') else ' FAILED'} | {ratio} |")
    return lines


def layer_table(results: list[dict]) -> list[str]:
    rows = [r for r in results if r.get("stage") == "layers" and "timing" in r]
    if not rows:
        return []
    lines = ["| layer | impl | ms | TFLOP/s | vs cuDNN | error |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        base_impl = ("cudnn_fwd_bwd" if r["impl"].endswith("_fwd_bwd") else
                     "cudnn_then_pool" if "+pool" in r["name"] else "cudnn")
        base_name = r["name"].rsplit("/", 1)[0] + "/" + base_impl
        base = next((b for b in rows if b["name"] == base_name), None)
        ratio = f"{_median(base) / _median(r):.2f}x" if base else "-"
        lines.append(f"| {r['name'].rsplit('/', 1)[0]} | {r['impl']} | {_median(r):.3f} | {r['tflops']} | {ratio} | "
                     f"{r['error_vs_cudnn']:.1e}{'' if r.get('correct') else ' FAILED'} |")
    return lines


def tune_table(logs: Path) -> list[str]:
    path = logs / "tune.json"
    if not path.exists():
        return []
    measured = json.loads(path.read_text()).get("measurements", [])
    by_key: dict[str, list[dict]] = {}
    for m in measured:
        by_key.setdefault(m["key"], []).append(m)
    lines = ["| layer | kind | aten ms | heuristic ms | best ms | best config | best vs aten |",
             "|---|---|---:|---:|---:|---|---:|"]
    for key, rows in by_key.items():
        ok = [r for r in rows if r.get("ok")]
        if not ok:
            lines.append(f"| {rows[0]['layer']} | {rows[0]['kind']} | {rows[0]['aten_ms']} | - | - | none correct | - |")
            continue
        best = min(ok, key=lambda r: r["ms"])
        first = rows[0].get("ms", float("nan"))
        lines.append(f"| {best['layer']} | {best['kind']} | {best['aten_ms']:.3f} | {first:.3f} | {best['ms']:.3f} | "
                     f"{best['config']} | {best['aten_ms'] / best['ms']:.2f}x |")
    return lines


def other_table(results: list[dict]) -> list[str]:
    rows = [r for r in results if r.get("stage") in ("ceilings", "loss", "augment", "pipeline", "profile")]
    lines = []
    for r in rows:
        fields = {k: v for k, v in r.items() if k not in ("stage", "name", "timing", "bare_timing", "plan")}
        median = f"{_median(r):.3f} ms; " if "timing" in r else ""
        lines.append(f"- {r['stage']} / {r['name']}: {median}{', '.join(f'{k}={v}' for k, v in fields.items())}")
    return lines


def junit_counts(path: Path) -> str | None:
    if not path.exists():
        return None
    text = path.read_text()
    match = re.search(r'<testsuite[^>]*?errors="(\d+)"[^>]*?failures="(\d+)"[^>]*?skipped="(\d+)"[^>]*?tests="(\d+)"',
                      text)
    if not match:
        return "junit unreadable"
    errors, failures, skipped, tests = map(int, match.groups())
    failed = re.findall(r'<testcase classname="([^"]+)" name="([^"]+)"[^>]*>\s*<(?:failure|error)', text)
    names = "; ".join(f"{c.rsplit('.', 1)[-1]}::{n}" for c, n in failed[:12])
    return (f"{tests - skipped - failures - errors} passed, {failures} failed, {errors} errors, {skipped} skipped"
            + (f" (failed: {names}{' ...' if len(failed) > 12 else ''})" if failed else ""))


def failures_in_log(path: Path) -> str | None:
    """For a verbose pytest log without its junit file (stopped by the stage's cap): how far it got and the
    tests that had failed by then."""
    if not path.exists():
        return None
    text = path.read_text(errors="replace")
    ended = re.findall(r"^(?:\[gw\d+\] )?\[\s*(\d+)%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)", text, re.M)
    if not ended:
        ended = [(p, o, n) for n, o, p in re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)"
                                                      r"\s+\[\s*(\d+)%\]", text, re.M)]
    if not ended:
        return None
    failed = [name for _, outcome, name in ended if outcome in ("FAILED", "ERROR")]
    names = "; ".join(failed[:12]) + (" ..." if len(failed) > 12 else "")
    return (f"stopped at {ended[-1][0]}% ({len(ended)} tests ended): {len(failed)} failed"
            + (f" ({names})" if failed else ""))


def write_summary(run: Run, plan: list[Stage], info: dict) -> str:
    results = load_results(run.out)
    by_name = {s.name: s for s in plan}
    title = "GPU run" + (" (DRY RUN on the CPU: Triton's interpreter, tiny shapes; no number means anything)"
                         if run.dry_run else "")
    lines = [f"# {title}", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"card: {info.get('gpu') or 'none'}"
             + (f" (sm_{info['capability'].replace('.', '')}, {info['sms']} SMs, {info['memory_gib']} GiB)"
                if info.get("capability") else "")
             + f"; torch {info.get('torch')} (CUDA {info.get('cuda')}), triton {info.get('triton')}, "
               f"numpy {info.get('numpy')}, Python {info.get('python')}",
             f"budget {run.budget_s:.0f} s, used {run.elapsed():.0f} s; extension build: {run.build_state}", "",
             "## Goals", ""]
    lines += [g.line(run.dry_run) for g in goals(results, by_name)]
    lines += ["", "## Stages", "", "| stage | status | seconds | estimate | cap | detail |", "|---|---|---:|---:|---:|---|"]
    for s in plan:
        junit = junit_counts(run.logs / f"{s.name}.xml") or failures_in_log(run.logs / f"{s.name}.log")
        detail = "; ".join(filter(None, [s.detail, junit]))
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.estimate_s:.0f} | {s.cap_s:.0f} | {detail} |")
    for title_, table in (("Network (batch 8, 572x572, bf16, channels_last)", network_table(results)),
                          ("Layers", layer_table(results)), ("Tuning (unet_fast.tune)", tune_table(run.logs)),
                          ("Loss, augmentation, pipeline, ceilings, profile",
                                                               other_table(results))):
        if table:
            lines += ["", f"## {title_}", ""] + table
    lines += [""] + [f"- note: {n}" for n in run.notes]
    return "\n".join(lines) + "\n"


def pack(run: Run, plan: list[Stage], info: dict) -> list[Path]:
    summary = write_summary(run, plan, info)
    (run.out / "summary.md").write_text(summary)
    everything = {"info": info, "budget_s": run.budget_s, "elapsed_s": round(run.elapsed(), 1),
                  "dry_run": run.dry_run, "build": run.build_state,
                  "stages": [{k: getattr(s, k) for k in ("name", "status", "seconds", "estimate_s", "cap_s", "detail")}
                             for s in plan],
                  "results": load_results(run.out)}
    (run.out / "results.json").write_text(json.dumps(everything, indent=1) + "\n")
    with tarfile.open(run.out / "logs.tar.gz", "w:gz") as tar:
        tar.add(run.logs, arcname="logs")
    packed = [run.out / name for name in ("summary.md", "results.json", "logs.tar.gz")]
    destination = os.environ.get("OUT")
    if destination:
        Path(destination).mkdir(parents=True, exist_ok=True)
        for path in packed:
            if (Path(destination) / path.name).resolve() != path.resolve():  # OUTDIR may be $OUT itself
                shutil.copyfile(path, Path(destination) / path.name)
    return packed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", type=Path)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds for the whole run, packing included (default {DEFAULT_BUDGET_S})")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: the same stages on the CPU, tiny shapes")
    parser.add_argument("--only", default="", help="comma-separated stages to run, in this order (default: all "
                                                   "that fit, in order of value)")
    parser.add_argument("--skip", default="", help="comma-separated stages to leave out")
    parser.add_argument("--no-build", action="store_true", help="do not build the CUDA extension")
    args = parser.parse_args(argv)
    order = [n for n in args.only.split(",") if n]
    plan = ordered(stages(), order)
    names = {s.name for s in plan}
    only = set(order)
    skip = {n for n in args.skip.split(",") if n}
    if (only | skip) - names:
        parser.error(f"unknown stage(s) {sorted((only | skip) - names)}; stages: {', '.join(s.name for s in plan)}")
    if args.budget < 60:
        parser.error(f"--budget must be at least 60 seconds, got {args.budget:g}")

    selected = selected_stages(plan, only, skip)
    allotments = allot(plan, selected, args.budget, build=not args.no_build)
    print("\n".join(plan_lines(allotments, args.budget, build=not args.no_build)), flush=True)
    if args.dry_run and not plan_fits(allotments):
        print("gpu_run: dry run failed: the plan does not fit the budget (--budget, --only/--skip)", file=sys.stderr)
        return 1
    left_out = [a.stage.name for a in allotments if a.stage.name in only and a.skipped]
    if args.dry_run and left_out:  # the dry run runs them all (Run.left): only the plan says a GPU would not
        print(f"gpu_run: dry run failed: on a GPU the plan skips {', '.join(left_out)}, named by --only "
              "(--budget)", file=sys.stderr)
        return 1

    gpu = gpu_name()
    if not args.dry_run and gpu is None:
        print("gpu_run: no CUDA device visible to torch (--dry-run runs the same stages on the CPU)", file=sys.stderr)
        return 1
    if args.outdir is not None:
        out = args.outdir
    elif args.dry_run:
        out = Path(tempfile.mkdtemp(prefix="unet_fast-gpu-dry-run."))
    else:
        out = ROOT / "benchmarks" / "results" / f"{datetime.date.today():%Y-%m-%d}-{re.sub(r'[^A-Za-z0-9]+', '_', gpu)}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"== results in {out}", flush=True)

    run = Run(out, args.budget, args.dry_run)
    info = versions()
    print("== " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    try:
        execute(run, plan, selected, build=not args.no_build)
    finally:
        packed = pack(run, plan, info)
    print((run.out / "summary.md").read_text())
    print(f"== results in {out}: {', '.join(p.name for p in packed)}"
          + (f" (copied to {os.environ['OUT']})" if os.environ.get("OUT") else ""))
    failed = [s.name for s in plan if s.status.startswith(("failed", "timeout"))]
    if failed:
        print(f"== stages that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
