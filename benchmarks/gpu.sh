#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU: build with CUDA for this GPU, run every test
# (GPU-marked included), run the benchmarks, and write everything under one folder:
#   benchmarks/gpu.sh [OUTDIR]        (default: benchmarks/results/<date>-<gpu>)
#   benchmarks/gpu.sh --dry-run [OUTDIR]   (default: a fresh temporary folder, mktemp -d; printed)
#       no GPU needed: the same steps and files with the CUDA build skipped, Triton kernels in the
#       interpreter on the CPU, a few tests and the conv benchmarks on a tiny network
#       (UNET_FAST_BENCH_DRY_RUN=1). It checks this script end to end; its numbers mean nothing,
#       so by default they stay out of benchmarks/results/.
# Needs only what such a machine has: python with torch (CUDA), triton, nvcc, pytest,
# pytest-benchmark. Works offline: nothing is downloaded; missing optional packages are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=
if [ "${1:-}" = "--dry-run" ]; then dry_run=--dry-run; shift; fi
if [ -n "$dry_run" ]; then
  export TRITON_INTERPRET=1 UNET_FAST_BENCH_DRY_RUN=1
  tests=(tests/test_conv3x3.py -k "dispatch or bad_inputs or ties_break")
  benchmarks=(benchmarks/test_bench_conv.py)
else
  gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))" 2>/dev/null) || {
    echo "gpu.sh: no CUDA device visible to torch (benchmarks/gpu.sh --dry-run runs without one)"; exit 1; }
  tests=(tests/)
  benchmarks=(benchmarks/)
fi
if [ -n "${1:-}" ]; then
  out=$1
elif [ -n "$dry_run" ]; then  # never beside real results
  out=$(mktemp -d "${TMPDIR:-/tmp}/unet_fast-gpu-dry-run.XXXXXX") || { echo "gpu.sh: mktemp -d failed"; exit 1; }
else
  out=benchmarks/results/$(date +%Y-%m-%d)-$gpu
fi
mkdir -p "$out"
echo "== results in $out"
status=0

if [ -n "$dry_run" ]; then
  echo "== build skipped (dry run: the extension already built here is used)" | tee "$out/build.log"
else
  arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  echo "== build (TORCH_CUDA_ARCH_LIST=$arch)"
  TORCH_CUDA_ARCH_LIST=$arch FORCE_CUDA=1 python setup.py build_ext --inplace >"$out/build.log" 2>&1 \
    || { echo "build failed, see $out/build.log"; tail -30 "$out/build.log"; status=1; }
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python -m unet_fast.cli info | tee "$out/info.txt"

echo "== tests"
python -m pytest "${tests[@]}" -q -x --junitxml="$out/tests.xml" -p no:cacheprovider 2>&1 | tail -25 \
  | tee "$out/tests.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== GPU checks (sanitizer etc.)"
if [ -x benchmarks/gpu_checks.sh ]; then benchmarks/gpu_checks.sh $dry_run "$out" || status=1; fi

echo "== benchmarks"
python -m pytest "${benchmarks[@]}" -q -p no:cacheprovider --benchmark-json="$out/benchmarks.json" \
  --benchmark-columns=median,iqr,rounds 2>&1 | tail -40 | tee "$out/benchmarks.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if [ -f "$out/benchmarks.json" ]; then
  python benchmarks/report.py "$out/benchmarks.json" > "$out/benchmarks.md" && cat "$out/benchmarks.md" || status=1
else
  echo "no benchmark results" | tee "$out/benchmarks.md"; status=1
fi
{
  echo "# GPU run $(date -u +%FT%TZ)${dry_run:+ (dry run: CPU, Triton interpreter, tiny inputs; times mean nothing)}"
  python -c "import torch, triton, platform; gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'; print(f'GPU: {gpu}; torch {torch.__version__}; triton {triton.__version__}; python {platform.python_version()}')"
  echo; echo "exit status: $status"
} > "$out/README.md"
echo "== results in $out (exit status $status)"
exit $status
