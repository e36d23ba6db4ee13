#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU: build with CUDA for this GPU, run every test
# (GPU-marked included), run the benchmarks, and write everything under one folder:
#   benchmarks/gpu.sh [OUTDIR]        (default: benchmarks/results/<date>-<gpu>)
# Needs only what such a machine has: python with torch (CUDA), triton, nvcc, pytest,
# pytest-benchmark. Works offline: nothing is downloaded; missing optional packages are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))" 2>/dev/null) || {
  echo "gpu.sh: no CUDA device visible to torch"; exit 1; }
out=${1:-benchmarks/results/$(date +%Y-%m-%d)-$gpu}
mkdir -p "$out"
arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
status=0

echo "== build (TORCH_CUDA_ARCH_LIST=$arch)"
TORCH_CUDA_ARCH_LIST=$arch FORCE_CUDA=1 python setup.py build_ext --inplace >"$out/build.log" 2>&1 \
  || { echo "build failed, see $out/build.log"; tail -30 "$out/build.log"; status=1; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python -m unet_fast.cli info | tee "$out/info.txt"

echo "== tests"
python -m pytest tests/ -q -x --junitxml="$out/tests.xml" -p no:cacheprovider 2>&1 | tail -25 | tee "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== GPU checks (sanitizer etc.)"
if [ -x benchmarks/gpu_checks.sh ]; then benchmarks/gpu_checks.sh "$out" || status=1; fi

echo "== benchmarks"
python -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-json="$out/benchmarks.json" \
  --benchmark-columns=median,iqr,rounds 2>&1 | tail -40 | tee "$out/benchmarks.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python benchmarks/report.py "$out/benchmarks.json" > "$out/benchmarks.md" && cat "$out/benchmarks.md"
{
  echo "# GPU run $(date -u +%FT%TZ)"
  python -c "import torch, triton, platform; print(f'GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; triton {triton.__version__}; python {platform.python_version()}')"
  echo; echo "exit status: $status"
} > "$out/README.md"
exit $status
