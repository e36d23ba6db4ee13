#!/usr/bin/env bash
# GPU checks called by benchmarks/gpu.sh [--dry-run] OUTDIR: compute-sanitizer memcheck on a small
# forward and backward through every Triton op, then the GPU-marked tests comparing each op with
# aten in bf16/fp16/fp32 (junit in OUTDIR). Exit status non-zero when any check fails.
# --dry-run (no GPU): gpu_sanitize.py runs on the CPU in Triton's interpreter, without the sanitizer.
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
out=${1:-benchmarks/results/gpu-checks}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$dry_run" ]; then
  echo "== dry run: gpu_sanitize.py on the CPU in Triton's interpreter (no compute-sanitizer)"
  TRITON_INTERPRET=1 python benchmarks/gpu_sanitize.py cpu >"$out/sanitizer.txt" 2>&1 || status=1
  tail -5 "$out/sanitizer.txt"
elif [ -n "$sanitizer" ]; then
  echo "== compute-sanitizer memcheck (small forward + backward, no caching allocator)"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 600 "$sanitizer" --tool memcheck --error-exitcode 1 \
    --leak-check no python benchmarks/gpu_sanitize.py >"$out/sanitizer.txt" 2>&1 || status=1
  tail -5 "$out/sanitizer.txt"
else
  echo "compute-sanitizer not found: memcheck skipped" | tee "$out/sanitizer.txt"
fi

echo "== GPU op checks against aten (bf16, fp16, fp32)"
python -m pytest -q -m gpu -p no:cacheprovider --junitxml="$out/gpu_op_checks.xml" \
  tests/test_conv3x3.py tests/test_model_triton.py tests/test_crop_concat.py 2>&1 | tail -15 \
  | tee "$out/gpu_op_checks.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
