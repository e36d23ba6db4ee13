#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU: build the extension for this GPU, check the
# kernels at the paper's shapes, measure every GPU goal, within a time budget, and pack the results
# into summary.md, results.json and logs.tar.gz (copied to $OUT when set):
#   benchmarks/gpu.sh [--budget SECONDS] [OUTDIR]      (default budget 480 s)
#   benchmarks/gpu.sh --dry-run [--budget SECONDS]     (no GPU: the same stages on the CPU, tiny shapes)
# Stages, caps and the plan: benchmarks/gpu_run.py. Runs offline; send .whl/ along
# (tools/gpu_wheels.sh) for what the GPU machine lacks.
set -uo pipefail
cd "$(dirname "$0")/.."
python=$(command -v python3 || command -v python)
exec "$python" benchmarks/gpu_run.py "$@"
