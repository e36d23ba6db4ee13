#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu for sm_80 and sm_90 with nvcc, without a GPU, and fail on errors
# or register spills. Works with the CPU build of torch, which lacks two generated CUDA headers:
# we supply them in a temporary include directory.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "check_cuda: nvcc not found, skipping"; exit 0; }
shopt -s nullglob
files=(csrc/cuda/*.cu)
[ ${#files[@]} -gt 0 ] || { echo "check_cuda: no .cu files"; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/include/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$work/include/c10/cuda/impl/cuda_cmake_macros.h"
includes=$(python - <<'PY'
import sysconfig, torch.utils.cpp_extension as c
print(" ".join("-I" + p for p in c.include_paths() + [sysconfig.get_paths()["include"]]))
PY
)
status=0
for f in "${files[@]}"; do
  for arch in 80 90; do
    log="$work/$(basename "$f").sm_$arch.log"
    if ! "$NVCC" -std=c++20 -O3 -diag-suppress 3306 -arch=sm_$arch -Xptxas -v -c "$f" -o "$work/out.o" \
        -I"$work/include" $includes -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1 \
        >"$log" 2>&1; then
      echo "FAIL $f sm_$arch"; cat "$log"; status=1; continue
    fi
    spills=$(grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$log" || true)
    if [ -n "$spills" ]; then echo "SPILLS $f sm_$arch"; echo "$spills"; status=1; continue; fi
    regs=$(grep -oE "Used [0-9]+ registers" "$log" | sort -u | tr '\n' ' ')
    echo "ok   $f sm_$arch ($regs)"
  done
done
exit $status
