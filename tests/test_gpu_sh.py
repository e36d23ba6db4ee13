"""benchmarks/gpu.sh (benchmarks/gpu_run.py): the one GPU command, its plan, its summary, and its dry run.

The budget logic, the goal lines, the junit counts and the summary tables are checked here on
synthetic results, in this process; one slow test runs ``gpu.sh --dry-run`` end to end on the CPU
(Triton's interpreter, tiny shapes, no extension build: CI builds it anyway) and checks the files
it packs, in the fresh temporary folder it picks (never benchmarks/results/) and in $OUT.
"""
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import ahead
import benchmark_scripts

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"


gpu_run = benchmark_scripts.load("gpu_run")
PACKED = {"summary.md", "results.json", "logs.tar.gz"}


def _env(**extra):
    """This process's environment with its Python first on PATH (gpu.sh runs python3 from PATH)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, **extra}


def _stage(plan, name):
    return next(s for s in plan if s.name == name)


# ----------------------------------------------------------------------------- the plan

def test_default_budget_fits_every_essential_stage_in_order():
    plan = gpu_run.stages()
    allotments = gpu_run.allot(plan, plan, gpu_run.DEFAULT_BUDGET_S)
    assert gpu_run.plan_fits(allotments)
    end = 0.0
    for a in allotments:
        assert a.start_s >= end  # one after the other, in the plan's order
        if a.stage.needs_extension:
            assert a.start_s >= gpu_run.BUILD_ESTIMATE_S  # waits for the background build
        if not a.skipped:
            assert a.seconds == min(a.stage.estimate_s, a.stage.cap_s)
            end = a.start_s + a.seconds
        elif a.stage.essential:
            pytest.fail(f"{a.stage.name}: {a.skipped}")
    assert end + gpu_run.PACK_RESERVE_S <= gpu_run.DEFAULT_BUDGET_S
    lines = gpu_run.plan_lines(allotments, gpu_run.DEFAULT_BUDGET_S)
    assert "every essential stage fits" in lines[-1]
    assert all(any(line.split()[:1] == [s.name] for line in lines) for s in plan)


def test_a_small_budget_does_not_fit_and_says_which_stages_would_go():
    plan = gpu_run.stages()
    allotments = gpu_run.allot(plan, plan, 200)
    assert not gpu_run.plan_fits(allotments)
    last = gpu_run.plan_lines(allotments, 200)[-1]
    skipped = [a.stage.name for a in allotments if a.stage.essential and a.skipped]
    assert skipped and "over the 200 s budget" in last and all(name in last for name in skipped)


def test_only_the_selected_stages_count():
    plan = gpu_run.stages()
    network = [_stage(plan, "network")]
    allotments = gpu_run.allot(plan, network, 100, build=False)
    assert gpu_run.plan_fits(allotments)
    assert [a.stage.name for a in allotments if not a.skipped] == ["network"]
    assert all(a.skipped == "not selected (--only/--skip)" for a in allotments if a.stage.name != "network")
    assert not gpu_run.plan_fits(gpu_run.allot(plan, network, 60, build=False))  # 65 s of estimate


def test_only_runs_its_stages_in_the_order_given():
    plan = gpu_run.ordered(gpu_run.stages(), ["network", "max_autotune", "correctness"])
    names = [s.name for s in plan]
    assert names[:3] == ["network", "max_autotune", "correctness"]
    rest = [s.name for s in gpu_run.stages() if s.name not in names[:3]]
    assert names[3:] == rest  # the others keep their order of value
    selected = gpu_run.selected_stages(plan, {"network", "max_autotune", "correctness"}, set())
    allotments = gpu_run.allot(plan, selected, 600, build=False)
    run = [a for a in allotments if not a.skipped]
    assert [a.stage.name for a in run] == ["network", "max_autotune", "correctness"]
    # max_autotune is not essential: it leaves correctness its estimate
    assert run[1].seconds <= 600 - gpu_run.PACK_RESERVE_S - run[0].seconds - run[2].stage.estimate_s


def test_a_stage_that_is_not_essential_keeps_time_for_the_essential_ones_after_it():
    plan = gpu_run.stages()
    index = [s.name for s in plan].index("tune")
    later = [s for s in plan[index + 1:] if s.essential]
    assert gpu_run.reserve_for(plan, index, plan) == sum(min(s.estimate_s, s.cap_s) for s in later)
    assert gpu_run.reserve_for(plan, index, [plan[index]]) == 0  # nothing selected after it
    assert gpu_run.reserve_for(plan, 0, plan) == 0  # an essential stage keeps nothing back
    tune = plan[index]  # 75 s
    assert gpu_run.does_not_fit(tune, 275, 200) is None
    assert gpu_run.does_not_fit(tune, 230, 200) == ("needs about 75 s, 30 s left of the budget "
                                                    "after 200 s kept for later stages")
    assert gpu_run.does_not_fit(tune, 30, 0) == "needs about 75 s, 30 s left of the budget"


def test_execute_skips_what_no_longer_fits_and_runs_the_rest(tmp_path, monkeypatch):
    ran = []

    def fake_stage(run, stage, reserve=0.0):
        ran.append(stage.name)
        stage.status, stage.seconds = "ok", 0.0

    monkeypatch.setattr(gpu_run, "run_stage", fake_stage)
    monkeypatch.setattr(gpu_run, "install_carried_wheels", lambda run: None)
    plan = gpu_run.stages()
    run = gpu_run.Run(tmp_path, 200, dry_run=False)  # 190 s left once the packing is kept
    selected = [s for s in plan if s.name != "full_tests"]
    gpu_run.execute(run, plan, selected, build=False)
    status = {s.name: (s.status, s.detail) for s in plan}
    assert status["full_tests"] == ("skipped", "not selected (--only/--skip)")
    assert status["tune"][0] == "skipped" and "kept for later stages" in status["tune"][1]
    assert status["extension_checks"][0] == "skipped" and "no extension" in status["extension_checks"][1]
    # the fake stages take no time: every essential stage fits, and max_autotune, last, keeps nothing back
    for name in ("tma_check", "profile"):
        assert status[name][0] == "skipped" and "kept for later stages" in status[name][1], name
    assert ran == ["correctness", "ceilings", "network", "layers", "loss", "augment", "pipeline", "max_autotune",
                   "sanitizer"]

    # a dry run's CPU seconds are not a GPU's: every stage runs with its own cap, whatever the budget
    ran.clear()
    plan = gpu_run.stages()
    gpu_run.execute(gpu_run.Run(tmp_path / "dry", 60, dry_run=True), plan, plan, build=False)
    assert ran == [s.name for s in plan if s.name != "extension_checks"]


def test_a_suite_capped_by_the_budget_still_runs(tmp_path, monkeypatch):
    """The plan of 2026-11-27 for the next GPU run, `--budget 330 --only pipeline,full_tests`: the suite (360 s
    estimated) was skipped with 290 s left, although a capped suite names the failures it reached, while the
    dry run (every stage its own cap) ran it and passed."""
    plan = gpu_run.ordered(gpu_run.stages(), ["pipeline", "full_tests"])
    selected = gpu_run.selected_stages(plan, {"pipeline", "full_tests"}, set())
    allotments = {a.stage.name: a for a in gpu_run.allot(plan, selected, 330, build=False)}
    assert not allotments["full_tests"].skipped
    pipeline = _stage(plan, "pipeline").estimate_s
    assert allotments["full_tests"].seconds == 330 - gpu_run.PACK_RESERVE_S - pipeline  # what is left: a part
    assert "(capped before its estimate" in "\n".join(gpu_run.plan_lines(list(allotments.values()), 330, False))
    assert gpu_run.does_not_fit(_stage(plan, "full_tests"), 100, 0) == "needs about 120 s, 100 s left of the budget"

    caps = {}

    def fake_stage(run, stage, reserve=0.0):
        caps[stage.name] = min(stage.cap_s, run.left() - reserve)
        stage.status, stage.seconds = "ok", 0.0

    monkeypatch.setattr(gpu_run, "run_stage", fake_stage)
    monkeypatch.setattr(gpu_run, "install_carried_wheels", lambda run: None)
    gpu_run.execute(gpu_run.Run(tmp_path, 330, dry_run=False), plan, selected, build=False)
    assert list(caps) == ["pipeline", "full_tests"] and 300 < caps["full_tests"] <= 330 - gpu_run.PACK_RESERVE_S


def test_a_dry_run_fails_when_its_plan_skips_a_stage_named_by_only(tmp_path, capsys):
    """A dry run runs every stage whatever the budget: that a GPU would skip one --only names shows in its plan
    alone, so the dry run fails on it, before running anything."""
    argv = ["--dry-run", "--no-build", "--budget", "120", "--only", "pipeline,max_autotune", str(tmp_path / "out")]
    assert gpu_run.main(argv) == 1
    captured = capsys.readouterr()
    assert "max_autotune (if time is left)" in captured.out and "skipped: needs about 150 s" in captured.out
    assert "on a GPU the plan skips max_autotune, named by --only" in captured.err
    assert not (tmp_path / "out").exists()


def test_budget_and_stage_names_are_checked(capsys):
    for argv, message in ((["--dry-run", "--budget", "59"], "--budget must be at least 60 seconds"),
                          (["--dry-run", "--only", "network,warp_drive"], "unknown stage(s) ['warp_drive']"),
                          (["--skip", "lunch"], "unknown stage(s) ['lunch']")):
        with pytest.raises(SystemExit) as exit_:
            gpu_run.main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_dry_run_fails_its_plan_check_before_running_anything(tmp_path):
    env = _env(TMPDIR=str(tmp_path), OUT=str(tmp_path / "out"))
    done = subprocess.run([str(GPU_SH), "--dry-run", "--budget", "150"], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "== plan for a GPU run with a 150 s budget" in done.stdout
    assert re.search(r"^   correctness +120 s", done.stdout, re.MULTILINE)
    assert "over the 150 s budget" in done.stdout and "the plan does not fit the budget" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no results folder, nothing in $OUT


# ----------------------------------------------------------------------------- the summary

def _timing(ms):
    return {"median_ms": ms, "q25_ms": ms, "q75_ms": ms, "min_ms": ms, "reps": 5}


def _network(name, mode, ms, correct=True):
    return {"stage": "network" if "max_autotune" not in name else "max_autotune", "name": name, "mode": mode,
            "timing": _timing(ms), "batch": 8, "ms_per_tile": ms / 8, "tflops": round(2400 / ms, 1),
            "error": 5e-3, "cudnn_error": 5e-3, "correct": correct, "peak_memory_gib": 1.5}


SYNTHETIC = [
    _network("triton", "forward", 5.0), _network("triton", "forward+backward", 20.0, correct=False),
    _network("reference_eager_cudnn", "forward", 10.0), _network("reference_eager_cudnn", "forward+backward", 30.0),
    _network("compiled_reference_max_autotune", "forward", 7.0),
    _network("compiled_reference_max_autotune", "forward+backward", 18.0),
    {"stage": "ceilings", "name": "copy_bandwidth", "gbps": 4000.0},
    {"stage": "loss", "name": "8x2x512x512/fused_default", "timing": _timing(0.05), "gbps": 3600.0, "correct": True},
    {"stage": "loss", "name": "8x2x512x512/composite", "timing": _timing(0.5), "gbps": 360.0, "correct": True},
    {"stage": "pipeline", "name": "images_512", "timing": _timing(110.0), "overhead": 0.1, "images_per_s": 290.9},
    {"stage": "augment", "name": "unet_fast_batch", "timing": _timing(2.0), "speedup_per_sample": 99.5,
     "correct": True, "peer": "elasticdeform"},
    {"stage": "layers", "name": "enc0.conv2/cudnn", "impl": "cudnn", "timing": _timing(1.0), "tflops": 190.0,
     "error_vs_cudnn": 0.0, "correct": True},
    {"stage": "layers", "name": "enc0.conv2/fused", "impl": "fused", "timing": _timing(0.5), "tflops": 380.0,
     "error_vs_cudnn": 3e-3, "correct": True},
]


def test_goal_lines_pass_fail_and_not_measured():
    lines = {g.name: g.line(dry_run=False) for g in gpu_run.goals(SYNTHETIC, {})}
    assert len(lines) == 8
    assert lines["network forward vs torch.compile(max-autotune) of the reference"] == (
        "- network forward vs torch.compile(max-autotune) of the reference: PASS: 1.40x (goal >= 1.25x); "
        "5.00 ms vs 7.00 ms per batch of 8")
    assert lines["network forward+backward vs torch.compile(max-autotune)"].startswith(  # fast but wrong: a FAIL
        "- network forward+backward vs torch.compile(max-autotune): FAIL: 0.90x (goal >= 1.15x)")
    assert "OUTPUT CHECK FAILED" in lines["network forward+backward vs torch.compile(max-autotune)"]
    assert lines["network forward effective TFLOP/s (bf16, batch 8, 572x572)"].startswith(
        "- network forward effective TFLOP/s (bf16, batch 8, 572x572): PASS: 480 TFLOP/s")
    assert "PASS: 90 %" in lines["loss forward+backward bandwidth, (8, 2, 512, 512) fp32"]
    assert "PASS: 10.00x" in lines["loss forward+backward vs the eager composite"]
    assert "PASS: 10 %" in lines["predict_tiled overhead over the bare model forward, a set of 512x512 images"]
    assert lines["predict_tiled overhead over the bare model forward, one large image"] == (
        "- predict_tiled overhead over the bare model forward, one large image: not measured: no result "
        "(goal <= 10 %)")
    assert "FAIL: 99.50x" in lines["elastic deformation per sample, GPU batch of 64 vs the CPU call"]
    dry = [g.line(dry_run=True) for g in gpu_run.goals(SYNTHETIC, {})]
    assert all(line.endswith(")") and ": not measured: dry run (goal " in line for line in dry)


def test_goals_name_a_missing_baseline():
    plan = {s.name: s for s in gpu_run.stages()}
    plan["max_autotune"].status, plan["max_autotune"].detail = "skipped", "needs about 150 s, 66 s left"
    without = [r for r in SYNTHETIC if r["stage"] != "max_autotune"]
    line = gpu_run.goals(without, plan)[0].line(dry_run=False)
    assert line == ("- network forward vs torch.compile(max-autotune) of the reference: not measured: max-autotune "
                    "baseline: skipped needs about 150 s, 66 s left (goal >= 1.25x)")


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" \
errors="1" failures="1" skipped="2" tests="7" time="1.0" timestamp="2026-11-26T01:00:00" hostname="h">\
<testcase classname="tests.test_conv3x3" name="test_a" time="0.1" />
<testcase classname="tests.test_conv3x3" name="test_b[1-64]" time="0.1"><failure message="boom">x</failure></testcase>
<testcase classname="tests.test_model" name="test_c" time="0.1"><error message="setup">y</error></testcase>
</testsuite></testsuites>"""


def test_junit_counts(tmp_path):
    path = tmp_path / "stage.xml"
    assert gpu_run.junit_counts(path) is None
    path.write_text(JUNIT)
    assert gpu_run.junit_counts(path) == ("3 passed, 1 failed, 1 errors, 2 skipped "
                                          "(failed: test_conv3x3::test_b[1-64]; test_model::test_c)")
    path.write_text("<testsuites/>")
    assert gpu_run.junit_counts(path) == "junit unreadable"


def test_a_verbose_log_names_the_failures_of_a_stage_stopped_by_its_cap(tmp_path):
    """The H100 run of 2026-11-26: the whole suite, stopped at 92 % by its cap, left no junit file and a -q log
    of dots: six failures nobody could name. Now the stage logs a line per test (-v)."""
    log = tmp_path / "full_tests.log"
    assert gpu_run.failures_in_log(log) is None
    log.write_text("bringing up nodes...\n"
                   "[gw0] [  1%] PASSED tests/test_a.py::test_one \n"
                   "[gw1] [  2%] FAILED tests/test_b.py::test_two[x-1] \n"
                   "[gw0] [  3%] SKIPPED tests/test_a.py::test_three \n"
                   "[gw1] [ 92%] ERROR tests/test_c.py::test_four \n")
    assert gpu_run.failures_in_log(log) == ("stopped at 92% (4 tests ended): 2 failed "
                                            "(tests/test_b.py::test_two[x-1]; tests/test_c.py::test_four)")
    log.write_text("tests/test_a.py::test_one PASSED                    [ 50%]\n"
                   "tests/test_a.py::test_two FAILED                    [100%]\n")  # without xdist
    assert gpu_run.failures_in_log(log) == "stopped at 100% (2 tests ended): 1 failed (tests/test_a.py::test_two)"
    log.write_text("....F....\n")
    assert gpu_run.failures_in_log(log) is None
    assert "-v" in gpu_run.pytest_args(["tests/"], tmp_path / "x.xml", verbose=True)


def test_packing_into_out_itself(tmp_path, monkeypatch):
    """gpu.sh --budget N "$OUT" (the results folder is $OUT): packing copied each file onto itself and failed
    (shutil.SameFileError) after every stage had run."""
    run = gpu_run.Run(tmp_path, 480, dry_run=False)
    monkeypatch.setenv("OUT", str(tmp_path))
    info = {"gpu": "NVIDIA H100", "python": "3.12.3"}
    packed = gpu_run.pack(run, gpu_run.stages(), info)
    assert {p.name for p in packed} == PACKED and all(p.parent == tmp_path and p.stat().st_size for p in packed)


def test_summary_tables_and_file(tmp_path):
    network = gpu_run.network_table(SYNTHETIC)
    assert network[2].startswith("| triton | forward | 5.00 | 0.625 | 480.0 | 1.5 | 5.0e-03 (5.0e-03) | 2.00x |")
    assert any("| triton | forward+backward | 20.00 |" in row and "FAILED" in row for row in network)
    layers = gpu_run.layer_table(SYNTHETIC)
    assert layers[-1] == "| enc0.conv2 | fused | 0.500 | 380.0 | 2.00x | 3.0e-03 |"
    assert "- ceilings / copy_bandwidth: gbps=4000.0" in gpu_run.other_table(SYNTHETIC)

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tune.json").write_text(json.dumps({"measurements": [
        {"layer": "dec0.conv1", "kind": "forward", "key": "k", "config": [128, 64, 64, 8, 3, False],
         "aten_ms": 1.0, "ms": 0.8, "ok": True},
        {"layer": "dec0.conv1", "kind": "forward", "key": "k", "config": [256, 64, 64, 8, 3, False],
         "aten_ms": 1.0, "ms": 0.5, "ok": True}]}))
    assert gpu_run.tune_table(tmp_path / "logs")[-1] == (
        "| dec0.conv1 | forward | 1.000 | 0.800 | 0.500 | [256, 64, 64, 8, 3, False] | 2.00x |")

    run = gpu_run.Run(tmp_path, 480, dry_run=False)
    with open(tmp_path / "results.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in SYNTHETIC)
    plan = gpu_run.stages()
    plan[0].status, plan[0].seconds = "failed (exit 1)", 118.4
    (run.logs / "correctness.xml").write_text(JUNIT)
    info = {"gpu": "NVIDIA H200", "capability": "9.0", "sms": 132, "memory_gib": 139.8, "torch": "2.11.0",
            "cuda": "13.0", "triton": "3.6.0", "numpy": "2.5.2", "python": "3.12.3"}
    summary = gpu_run.write_summary(run, plan, info)
    assert "card: NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB); torch 2.11.0 (CUDA 13.0), triton 3.6.0" in summary
    assert "| correctness | failed (exit 1) | 118 | 120 | 240 | 3 passed, 1 failed, 1 errors, 2 skipped" in summary
    for title in ("## Goals", "## Stages", "## Network", "## Layers", "## Tuning", "## Loss, augmentation"):
        assert title in summary


# ----------------------------------------------------------------------------- the dry run, end to end

# gpu.sh runs every stage in a process of its own, a few seconds each of importing torch here: the end-to-end
# dry run takes the stages whose outputs the packing handles specially, the goal stages all run in one process
END_TO_END_STAGES = ("correctness", "tma_check", "network", "full_tests")
GOAL_STAGES_TOGETHER = ("ceilings", "profile", "layers", "loss", "augment", "pipeline", "max_autotune")


RESULTS = ROOT / "benchmarks" / "results"


def _end_to_end_dry_run(folder):
    env = _env(OMP_NUM_THREADS="1", TMPDIR=folder, OUT=str(Path(folder) / "device_out"))
    env.pop("TRITON_INTERPRET", None)  # gpu.sh --dry-run sets it itself
    argv = [str(GPU_SH), "--dry-run", "--no-build", "--only", ",".join(END_TO_END_STAGES)]
    return argv, {"cwd": folder, "env": env}, sorted(RESULTS.iterdir())


END_TO_END_DRY_RUN = ahead.Command("gpu-sh-dry-run", _end_to_end_dry_run, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, gpu.sh runs for real")
@END_TO_END_DRY_RUN.mark
def test_dry_run_packs_three_files_with_every_goal_line():
    pytest.importorskip("triton")
    run = END_TO_END_DRY_RUN.result()
    done, tmp_path, before = run.done, Path(run.folder), run.context
    out = tmp_path / "device_out"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "every essential stage fits" in done.stdout
    where = re.findall(r"^== results in ([^\s:]+)", done.stdout, re.MULTILINE)  # printed first and last
    assert len(where) == 2 and where[0] == where[1], done.stdout[-4000:]
    outdir = Path(where[0])
    assert outdir.parent == tmp_path and outdir.name.startswith("unet_fast-gpu-dry-run."), outdir
    assert sorted(RESULTS.iterdir()) == before  # nothing beside the real results

    assert {p.name for p in out.iterdir()} == PACKED  # exactly what comes back from a device
    for name in PACKED:
        assert (out / name).read_bytes() == (outdir / name).read_bytes()

    summary = (outdir / "summary.md").read_text()
    assert summary.startswith("# GPU run (DRY RUN")
    for goal in gpu_run.goals([], {}):
        assert goal.line(dry_run=True) in summary.splitlines()
    plan = gpu_run.stages()
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| ")}
    for stage in plan:
        assert stage.name in rows, stage.name
    assert "| ok |" in rows["correctness"] and " 0 failed, 0 errors" in rows["correctness"]
    assert "| ok |" in rows["tma_check"] and "right: all " in rows["tma_check"]  # each layout right in fp32
    assert "skipped" in rows["extension_checks"]  # --no-build: nothing to check

    everything = json.loads((outdir / "results.json").read_text())
    assert everything["dry_run"] is True and everything["budget_s"] == gpu_run.DEFAULT_BUDGET_S
    names = [s["name"] for s in everything["stages"]]  # --only's first, in its order, then the rest as planned
    assert names == list(END_TO_END_STAGES) + [s.name for s in plan if s.name not in END_TO_END_STAGES]
    stages_run = [s["name"] for s in everything["stages"] if s["status"] == "ok"]
    assert stages_run == list(END_TO_END_STAGES)
    assert {r["stage"] for r in everything["results"]} == {"network"}

    with tarfile.open(outdir / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"logs/{name}.log" for name in stages_run} <= names
    assert {"logs/build.log", "logs/correctness.xml", "logs/full_tests.xml"} <= names
    assert {f"logs/tma_check/{name}" for name in ("results.json", "summary.md", "verdict.txt")} <= names


TOGETHER = """
import sys
sys.path.insert(0, "benchmarks")
import gpu_goals, gpu_sanitize
for stage in sys.argv[2:]:
    assert gpu_goals.main([stage, "--out", sys.argv[1], "--dry-run"]) == 0, stage
gpu_sanitize.main("cpu")
"""


def _goal_stages_together(folder):
    # without the extension, as gpu.sh --dry-run --no-build runs the loss stage (the stage that needs it)
    env = _env(OMP_NUM_THREADS="1", TRITON_INTERPRET="1", UNET_FAST_BENCH_DRY_RUN="1", PYTHONUNBUFFERED="1",
               UNET_FAST_DISABLE_EXTENSION="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return [sys.executable, "-c", TOGETHER, folder, *GOAL_STAGES_TOGETHER], {"cwd": ROOT, "env": env}, None


GOAL_STAGES_DRY_RUN = ahead.Command("goal-stages-dry-run", _goal_stages_together, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, gpu.sh runs for real")
@GOAL_STAGES_DRY_RUN.mark
def test_dry_run_of_the_goal_stages_and_the_sanitizer():
    """The stages the end-to-end dry run leaves out, as gpu.sh --dry-run --no-build runs them (its environment,
    its arguments) but in one process. The tune stage's dry run is tests/test_tune.py, which this suite runs;
    extension_checks runs only with a built extension, which --no-build skips (the CI builds it and
    tests/test_extension.py checks it)."""
    pytest.importorskip("triton")
    assert set(END_TO_END_STAGES + GOAL_STAGES_TOGETHER + ("tune", "sanitizer", "extension_checks")) == {
        s.name for s in gpu_run.stages()}
    run = GOAL_STAGES_DRY_RUN.result()
    assert run.done.returncode == 0, run.done.stdout[-4000:] + run.done.stderr[-4000:]
    records = [json.loads(line) for line in (Path(run.folder) / "results.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == set(GOAL_STAGES_TOGETHER)


def test_network_stage_times_the_shipped_table_beside_the_tuned_one(tmp_path):
    """After the tune stage rewrote the package's table (H100, 2026-11-26: with wrong TMA tiles), the network
    stage could only time the new table; the one that ships is now timed in the same run (conv_table)."""
    goals = benchmark_scripts.load("gpu_goals")
    from unet_fast.ops.triton import conv3x3_configs as configs
    before = configs.table()
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps({"devices": {"sm90-132": {"forward/bf16/0+64->64/1024": [128, 64, 64, 8, 3, False]}}}))
    with goals.conv_table(shipped):
        assert configs.table() == {"sm90-132": {"forward/bf16/0+64->64/1024": configs.Config(128, 64, 64, 8, 3)}}
    assert configs.table() == before and configs.TABLE_PATH.name == "conv3x3_configs.json"


def test_max_autotune_times_the_modes_asked_for(monkeypatch):
    """H200 run 3 of 2026-11-27: the forward's max-autotune compile took 149 s of the 269 s cap and the
    forward+backward's did not finish; a short run can now ask for the forward+backward alone."""
    goals = benchmark_scripts.load("gpu_goals")
    timed = []
    monkeypatch.setattr(goals, "_network_models", lambda s: "ref")
    monkeypatch.setattr(goals, "_network_inputs", lambda s, ref: ("x", "grad"))
    monkeypatch.setattr(goals, "_reference_results", lambda s, ref, x, grad: {})
    monkeypatch.setattr(goals.torch, "compile", lambda model, mode=None: (model, mode))
    monkeypatch.setattr(goals, "_time_network", lambda s, record, name, model, *args: timed.append((name, model,
                                                                                                   args[-1])))
    monkeypatch.setattr(goals.torch.backends.cudnn, "benchmark", False)
    goals.stage_max_autotune(goals.Setting(dry_run=False), None)
    assert [t[2] for t in timed] == ["forward", "forward+backward"]
    assert timed[0][:2] == ("compiled_reference_max_autotune", ("ref", "max-autotune"))
    timed.clear()
    monkeypatch.setenv("UNET_FAST_BENCH_MODES", "forward+backward")
    goals.stage_max_autotune(goals.Setting(dry_run=False), None)
    assert [t[2] for t in timed] == ["forward+backward"]


# ----------------------------------------------------------------------------- the TMA check (gpu_tma_check.py)

def _load_tma_check():
    return benchmark_scripts.load("gpu_tma_check")


def test_tma_check_verdict_needs_every_allowed_tma_tile_and_every_wgrad_right():
    check = _load_tma_check()
    tile = [128, 128, 64, 8, 2]

    def rows(tma_error=2.9e-3, deterministic=True, twin=True, failed=False, bias_error=1.2e-5):
        found = [dict(kind="forward", layer="a", tile=tile, layout="pointer", allowed=True, error=2.8e-3,
                      deterministic=True)] if twin else []
        tma = dict(kind="forward", layer="a", tile=tile, layout="tma", allowed=True, deterministic=deterministic)
        tma.update(failed="OutOfResources: shared memory") if failed else tma.update(error=tma_error)
        raced = dict(kind="forward", layer="a", tile=[128, 128, 64, 8, 3], layout="tma", allowed=False, error=0.16,
                     deterministic=False)  # a tile the package does not run through TMA: reported, not counted
        wgrad = [dict(kind="wgrad", layer="b", tile=[128, 128, 64, 8, 3], bias_grad=bias, deterministic=True,
                      error=bias_error if bias else 1.2e-5) for bias in (True, False)]
        other_order = dict(kind="wgrad", layer="b", tile=[128, 64, 64, 8, 3], bias_grad=True, deterministic=True,
                           error=1.6e-5)  # another tile's summation order (H100 run 4): right
        return found + [tma, raced] + wgrad + [other_order]

    ok, line = check.verdict(rows())
    assert ok and "all 4 right" in line and "1 TMA tiles it does not allow raced" in line
    assert not check.verdict(rows(tma_error=1.1e-2))[0]    # the H100's fault
    assert not check.verdict(rows(deterministic=False))[0]  # a race
    assert not check.verdict(rows(twin=False))[0]           # nothing to compare with
    assert not check.verdict(rows(failed=True))[0]          # did not run: not shown right
    ok, line = check.verdict(rows(bias_error=3.7e-3))       # the wgrad bias fault
    assert not ok and "wgrad b [128, 128, 64, 8, 3] bias_grad=True" in line
    wrong_bias = rows()
    wrong_bias[-3]["bias_error"] = 2e-3                     # a bias sum wrong the same way on every run
    ok, line = check.verdict(wrong_bias)
    assert not ok and "bias_grad=True" in line
    ok, line = check.verdict([r for r in rows() if r["kind"] == "wgrad"])  # the deadline before any TMA tile
    assert not ok and line.startswith("incomplete")


def test_profile_groups_kernels_by_whose_they_are():
    goals = benchmark_scripts.load("gpu_goals")
    group = goals._kernel_group
    assert group("conv3x3_kernel") == group("conv3x3_wgrad_kernel") == "ours: conv3x3"
    assert group("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64") == \
        group("cudnn::engines_precompiled::nchwToNhwcKernel") == "cuDNN/CUTLASS conv"
    assert group("triton_poi_fused_cat_relu_threshold_backward_0") == "Triton elementwise/reductions"
    assert group("triton_red_fused_convolution_backward_threshold_backward_7") == "Triton elementwise/reductions"
    assert group("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>") == \
        "other (aten elementwise, copies, fills)"
