#!/usr/bin/env bash
# The GPU machines' software, reproduced on this CPU machine as far as it allows, and the GPU run's own
# checks under it: benchmarks/gpu.sh --dry-run and the Triton static checks (tests/triton_static.py,
# every shipped configuration and every table entry, for sm_90 and sm_80).
#   tools/gpu_env_check.sh [--rebuild] [--no-build] [--tests]
#     --rebuild   make the environment again      --no-build  dry run without the extension's CPU build
#     --tests     also the test suite (-m "not slow") under it
# The GPU machines run Python 3.12, torch 2.11 (CUDA), triton 3.6, numpy 2.5, without zarr, monai or
# elasticdeform, offline. Here: a venv in .gpuenv/ (git-ignored, made once) with triton 3.6.0, the newest
# numpy >= 2.4 the indexes have (the Triton 3.6 interpreter bug needs >= 2.4), none of those three
# packages, and Python 3.12 where a CPU build of torch for it lies on this machine (/opt/wheels, the
# file indexes of `pip config list`), else Python 3.11 (said so): PyPI's torch for 3.12 is the CUDA
# build, which needs some GB of NVIDIA libraries. Override with GPUENV_PYTHON, GPUENV_TORCH.
# The report goes to stdout and .gpuenv/report.md; exit status 1 when a check fails.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rebuild=0 build_flag=() run_tests=0
for arg in "$@"; do
  case $arg in
    --rebuild) rebuild=1 ;;
    --no-build) build_flag=(--no-build) ;;
    --tests) run_tests=1 ;;
    *) echo "usage: tools/gpu_env_check.sh [--rebuild] [--no-build] [--tests]" >&2; exit 2 ;;
  esac
done
home=$root/.gpuenv
venv=$home/venv
mkdir -p "$home"

# A CPU build of torch for cp312 on this machine's disk (a find-links folder or a file:// index)?
local_cpu_torch() {
  python3 - "$1" <<'PY'
import glob, os, re, subprocess, sys, urllib.parse
tag = sys.argv[1]
config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
places = [p for value in re.findall(r"(?:find-links|index-url)='([^']*)'", config) for p in value.split()]
for place in places:
    path = urllib.parse.urlparse(place).path if place.startswith("file:") else place
    if os.path.isdir(path):
        names = [os.path.basename(p) for p in glob.glob(os.path.join(path, "torch-*.whl"))]
        index = os.path.join(path, "torch", "index.html")
        if os.path.exists(index):
            names += re.findall(r"(torch-[^\"#/]+\.whl)", open(index).read())
        for name in names:
            if f"-{tag}-" in name and "+cpu" in name:
                print(name)
                sys.exit(0)
sys.exit(1)
PY
}

python_note=""
if [ -n "${GPUENV_PYTHON:-}" ]; then
  python=$GPUENV_PYTHON
  python_note="Python from GPUENV_PYTHON"
elif wheel=$(local_cpu_torch cp312) && command -v python3.12 >/dev/null; then
  python=$(command -v python3.12)
  python_note="Python 3.12 as on the GPU machines ($wheel)"
else
  python=$(command -v python3.11)
  python_note="Python 3.11, not the GPU machines' 3.12: no CPU build of torch for 3.12 on this machine"
fi
torch_spec=${GPUENV_TORCH:-torch==2.13.0}
spec="$python $torch_spec triton==3.6.0 numpy>=2.4,<2.6"

if [ $rebuild = 1 ] || [ ! -f "$venv/.spec" ] || [ "$(cat "$venv/.spec")" != "$spec" ]; then
  echo "== making $venv ($spec)"
  rm -rf "$venv"
  "$python" -m venv "$venv" || exit 1
  # the package's dependencies but zarr (and nothing of monai or elasticdeform); unet_fast itself is
  # read from this checkout (PYTHONPATH), as gpu.sh does on the GPU machine
  "$venv/bin/pip" install -q "$torch_spec" triton==3.6.0 "numpy>=2.4,<2.6" scipy tifffile tqdm safetensors \
    pillow matplotlib pytest pytest-benchmark hypothesis setuptools wheel ninja 2>&1 \
    | grep -v "^WARNING: Location 'file:" ; [ "${PIPESTATUS[0]}" = 0 ] || exit 1
  echo "$spec" > "$venv/.spec"
fi
py=$venv/bin/python
export PATH="$venv/bin:$PATH" PYTHONPATH="$root" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
unset TRITON_INTERPRET

status=0
report=$home/report.md
{
  echo "# GPU environment check, $(date -u '+%Y-%m-%d %H:%M') UTC"
  echo
  echo "- $python_note"
  "$py" -c "import platform, torch, triton, numpy; print(f'- Python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, numpy {numpy.__version__}')"
  missing=$("$py" -c "import importlib.util as u; print(', '.join(m for m in ('zarr', 'monai', 'elasticdeform') if u.find_spec(m) is None))")
  echo "- absent, as on the GPU machines: $missing"
} > "$report"
if [ "$("$py" -c "import importlib.util as u; print(sum(u.find_spec(m) is not None for m in ('zarr', 'monai', 'elasticdeform')))")" != 0 ]; then
  echo "- FAIL: zarr, monai or elasticdeform is installed in $venv" >> "$report"; status=1
fi

echo "== benchmarks/gpu.sh --dry-run ${build_flag[*]} (log: $home/dry_run.log)"
rm -rf "$home/out"
started=$(date +%s)
OUT=$home/out benchmarks/gpu.sh --dry-run "${build_flag[@]}" > "$home/dry_run.log" 2>&1
rc=$?
seconds=$(( $(date +%s) - started ))
packed=$(ls "$home/out" 2>/dev/null | tr '\n' ' ')
if [ $rc = 0 ]; then
  echo "- gpu.sh --dry-run ${build_flag[*]}: PASS in $seconds s; \$OUT holds: $packed" >> "$report"
else
  echo "- gpu.sh --dry-run ${build_flag[*]}: FAIL (exit $rc) after $seconds s; see $home/dry_run.log" >> "$report"; status=1
fi
# the summary's first lines and its stages table
[ -f "$home/out/summary.md" ] && sed -n '3,4p; /^## Stages/,/^## Network/{/^|/p}' "$home/out/summary.md" \
  | sed 's/^/    /' >> "$report"

echo "== tests/triton_static.py (every shipped configuration, then the table), sm_90 and sm_80"
: > "$home/static.jsonl"
for flag in "" --table; do
  TRITON_DEFAULT_FP_FUSION=1 "$py" tests/triton_static.py --json $flag >> "$home/static.jsonl" 2>> "$home/static.err" \
    || { echo "- FAIL: tests/triton_static.py --json $flag (see $home/static.err)" >> "$report"; status=1; }
done
"$py" - "$home/static.jsonl" >> "$report" <<'PY' || status=1
import json, sys
sys.path.insert(0, "tests")
from test_triton_static import check  # the assertions of tests/test_triton_static.py

rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
failed = []
for r in rows:
    try:
        check([r])
    except AssertionError as error:
        failed.append(f"{r['label']} sm_{r['capability']}: {error}")
spills = [r for r in rows if r["spill_bytes"]]
print(f"- static checks: {'PASS' if rows and not failed else 'FAIL'}: {len(rows)} compiles "
      f"({sum(r['label'].startswith('table') for r in rows)} of table entries), {len(spills)} with spills")
for line in failed:
    print(f"    FAIL {line}")
print("\n| launch | target | BLOCK sizes | warps | stages | registers | spill bytes | shared KiB | tensor cores |")
print("|---|---|---|---:|---:|---:|---:|---:|---|")
for r in rows:
    print(f"| {r['label']} | sm_{r['capability']} | {tuple(r['blocks'])} | {r['num_warps']} | {r['num_stages']} | "
          f"{r['registers']} | {r['spill_bytes']} | {r['shared'] / 1024:.0f} | {r['tensor_cores']} |")
sys.exit(1 if failed or not rows else 0)
PY

if [ $run_tests = 1 ]; then
  echo "== pytest -m 'not slow' tests/ (log: $home/tests.log)"
  "$py" -m pytest -q -p no:cacheprovider -m "not slow" tests/ > "$home/tests.log" 2>&1
  rc=$?
  echo "- tests (-m 'not slow'): $([ $rc = 0 ] && echo PASS || echo FAIL): $(tail -1 "$home/tests.log")" >> "$report"
  [ $rc = 0 ] || status=1
fi
cat "$report"
exit $status
