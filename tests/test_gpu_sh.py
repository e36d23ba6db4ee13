"""benchmarks/gpu.sh --dry-run: the one GPU command, end to end on the CPU, writes every result file.

The dry run skips the CUDA build, runs Triton kernels in the interpreter, a few tests and the conv
benchmarks on a tiny network; what is checked here is the script and the files it leaves, in the
fresh temporary folder it picks without an OUTDIR (never benchmarks/results/, beside real results).
"""
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def junit_counts(path: Path) -> dict:
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, gpu.sh runs for real")
def test_dry_run_writes_every_result_file(tmp_path):
    pytest.importorskip("pytest_benchmark")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}  # mktemp -d creates OUTDIR in TMPDIR
    env.pop("TRITON_INTERPRET", None)  # gpu.sh --dry-run sets it itself
    results = ROOT / "benchmarks" / "results"
    before = sorted(results.iterdir()) if results.is_dir() else []
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    where = re.findall(r"^== results in (\S+)", done.stdout, re.MULTILINE)  # printed first and last
    assert len(where) == 2 and where[0] == where[1], done.stdout[-4000:]
    out = Path(where[0])
    assert out.parent == tmp_path and out.name.startswith("unet_fast-gpu-dry-run."), out
    assert (sorted(results.iterdir()) if results.is_dir() else []) == before  # nothing beside real results

    names = {p.name for p in out.iterdir()}
    assert names >= {"build.log", "info.txt", "tests.xml", "tests.txt", "sanitizer.txt", "gpu_op_checks.xml",
                     "gpu_op_checks.txt", "benchmarks.json", "benchmarks.txt", "benchmarks.md", "README.md"}
    tests = junit_counts(out / "tests.xml")
    assert tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    checks = junit_counts(out / "gpu_op_checks.xml")  # collected, skipped without a GPU
    assert checks["tests"] > 0 and checks["failures"] == checks["errors"] == 0
    assert "forward and backward ran" in (out / "sanitizer.txt").read_text()

    groups = {b["group"] for b in json.loads((out / "benchmarks.json").read_text())["benchmarks"]}
    for prefix in ("conv3x3 ", "conv3x3+maxpool ", "first layer ", "unet forward ", "unet forward+backward "):
        assert any(g.startswith(prefix) for g in groups), (prefix, groups)
    report = (out / "benchmarks.md").read_text()
    assert "| test_unet[forward-triton_pool_epilogue_direct_first_layer] |" in report
    assert "| test_first_layer[direct] |" in report
    readme = (out / "README.md").read_text()
    assert "dry run" in readme and "exit status: 0" in readme
