#!/usr/bin/env bash
# The GPU machine's Python packages, emulated on this machine's CPU, and the GPU script's CPU
# mode run in them with the carried wheels installed as a GPU run installs them. Run it (with a
# package index) before every change to benchmarks/gpu_benchmarks.sh or to what it runs:
#
#   benchmarks/gpu_image_check.sh [VENV]     # VENV default: ${TMPDIR:-/tmp}/regnet_jax_gpu_image
#
#   1. a fresh venv of Python 3.12 ($PYTHON312, else python3.12 on the PATH, else pyenv's newest
#      3.12) with what the image has and the script uses: jax and jaxlib 0.11.2, the newest
#      flax, optax and orbax-checkpoint that install beside them, numpy, absl-py (and pytest);
#      it stops if ml_collections, clu, tensorflow or tensorflow-datasets came with them;
#   2. `benchmarks/gpu_benchmarks.sh wheels`: benchmarks/gpu_wheels.txt's wheels in gpu_wheels/,
#      ready to travel;
#   3. in that venv, with GPU_WHEELS=gpu_wheels/: the script's tests (tests/test_benchmarks.py:
#      its CPU mode end to end, flax, optax and orbax-checkpoint imported from the carried
#      wheels, the stop at a failed backend check) and the throughput and numerics tests.
#
# About 3 minutes on a 2-core VM with pip's cache warm (docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-${TMPDIR:-/tmp}/regnet_jax_gpu_image}
start=$(date +%s)
is_312() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' \
  2> /dev/null; }
py=${PYTHON312:-}
if ! is_312 "$py"; then py=$(command -v python3.12 || true); fi
if ! is_312 "$py" && command -v pyenv > /dev/null; then
  py=$(ls -d "$(pyenv root)"/versions/3.12.*/bin/python 2> /dev/null | sort -V | tail -1)
fi
if ! is_312 "$py"; then
  echo "error: no Python 3.12 found; set PYTHON312 to one (the GPU image's Python is 3.12)" >&2
  exit 1
fi

if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
  echo "error: $venv exists and is not a venv; name another folder for the venv" >&2
  exit 1
fi
echo "1. venv $venv ($("$py" --version))"
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q jax==0.11.2 jaxlib==0.11.2 flax optax orbax-checkpoint \
  numpy absl-py pytest
for module in ml_collections clu tensorflow tensorflow_datasets; do
  if "$venv/bin/python" -c "import $module" 2> /dev/null; then
    echo "error: $module is installed in $venv; the GPU image has none" >&2
    exit 1
  fi
done
"$venv/bin/python" -m pip list 2> /dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy) '

echo "2. the carried wheels"
PYTHON="$venv/bin/python" benchmarks/gpu_benchmarks.sh wheels
ls gpu_wheels

echo "3. the tests of the GPU path, in the emulated image"
GPU_WHEELS="$PWD/gpu_wheels" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_benchmarks.py -k "gpu or numerics or dispatched or model_benchmark_rows"
echo "the emulated GPU image passed in $(( $(date +%s) - start ))s"
