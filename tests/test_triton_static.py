"""Static checks of the shipped Triton kernels for sm_90 and sm_80, without a GPU.

Each planned launch is compiled with triton.compile(ASTSource, GPUTarget) in a subprocess
(this test process may run the kernels in the interpreter, whose kernels cannot be compiled):
tensor-core instructions present (wgmma on sm_90, mma on sm_80), no register spills per
ptxas -v, shared memory within the per-block limit (H100 228 KiB, A100 164 KiB).

Every suite run compiles the decoder level's launches (one of each kernel, --quick). Every shipped configuration
is 187 compiles, about 3 minutes on one core with an empty Triton cache (as on a fresh machine), and the measured
table's another 25 s: more than the rest of the suite leaves room for, so they are marked slow and run where
kernels or configurations are judged: `-m slow` (.ci/run's slow tier; tools/gpu_env_check.sh runs them too).
"""
import json
import os
import sys
from pathlib import Path

import pytest

import ahead

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def _static_checks(*flags):
    def build(folder):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        return [sys.executable, str(ROOT / "tests" / "triton_static.py"), "--json", *flags], {"env": env}, None
    return ahead.Command("static" + "".join(flags), build, timeout=1200)


SHIPPED, QUICK, TABLE = _static_checks(), _static_checks("--quick"), _static_checks("--table")


def rows_of(command):
    done = command.result().done
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def check(rows):
    assert rows
    for r in rows:
        where = f"{r['label']} sm_{r['capability']}"
        assert r["spill_bytes"] == 0, f"{where}: {r['spill_bytes']} bytes spilled"
        assert r["shared"] <= r["smem_limit"], f"{where}: {r['shared']} bytes of shared memory"
        assert r["tma_loads"] == r["tma_kernel"], f"{where}: TMA loads {r['tma_loads']}"
        if not r["gemm"]:  # a copy kernel, or the direct kernel's FMA (tensor cores would be a mistake there)
            assert r["tensor_cores"] == "none", where
            continue
        if r["exact"]:  # exact fp32 must not go through TF32 tensor cores
            assert r["tensor_cores"] == "none", where
            continue
        # wgmma works on 64-row tiles: the 16-row wgrad tile of the 1-channel first layer uses mma
        wgmma = r["capability"] == 90 and r["blocks"][0] >= 64
        assert r["tensor_cores"] == ("wgmma" if wgmma else "mma"), where


@QUICK.mark
def test_decoder_layer_pooled_forward_and_direct_bf16_compile_for_sm90_and_sm80():
    rows = rows_of(QUICK)
    check(rows)
    assert {r["capability"] for r in rows} == {80, 90}
    assert {r["label"].split()[0] for r in rows} == {"forward", "dgrad", "wgrad", "crop_concat", "forward+pool",
                                                      "direct", "forward+tma", "dgrad+tma", "forward+splitk",
                                                      "dgrad+splitk", "forward+group", "dgrad+group"}
    assert sum(r["label"].endswith("(sum)") for r in rows) == 4  # each split-K launch's sum kernel, 2 targets


@pytest.mark.slow
@SHIPPED.mark
def test_every_shipped_configuration_compiles():
    check(rows_of(SHIPPED))


@pytest.mark.slow
@TABLE.mark
def test_every_table_configuration_compiles():
    """The measured per-layer table (unet_fast/ops/triton/conv3x3_configs.json): every entry compiles."""
    from unet_fast.ops.triton import conv3x3_configs

    if not conv3x3_configs.table():
        pytest.skip("no measured table in the package")
    check(rows_of(TABLE))
