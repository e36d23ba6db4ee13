#!/usr/bin/env bash
# Download, here (with network), the wheels the GPU machine lacks, for its Python 3.12, into .whl/
# (git-ignored). benchmarks/gpu.sh installs them offline when .whl/ is present; send it along with
# the run (the device tool's `carry`). What the GPU machine has and lacks: benchmarks/README.md.
#   tools/gpu_wheels.sh [DEST]      (default .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
mkdir -p "$dest"
# zarr (lazy TIFF reading, Zarr outputs) and its compiled/pure dependencies. numpy, scipy, tifffile,
# typing_extensions and packaging are there already. Not elasticdeform: its newest wheels (0.5.1) are built
# for numpy 1 and fail to import under the GPU machine's numpy 2.5 (H100, 2026-11-26: a failing test).
wheels=(zarr==3.1.6 numcodecs donfig google-crc32c)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux_2_5_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${wheels[@]}"
ls -la "$dest"
