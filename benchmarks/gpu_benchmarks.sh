#!/usr/bin/env bash
# GPU measurements on a machine without a package index, in one run of at most SECONDS (480:
# 8 minutes). Every measurement is a row of OUT/results.jsonl the moment it is taken, and
# OUT/log.txt holds what every command printed:
#
#   benchmarks/gpu_benchmarks.sh wheels       # here, with a package index: fills gpu_wheels/
#   benchmarks/gpu_benchmarks.sh 480 OUT      # there, from the checkout, gpu_wheels/ in it
#
# The GPU image it is written for has Python 3.12, jax/jaxlib 0.11.2 with the CUDA 13 plugin,
# flax, optax, orbax-checkpoint, numpy and absl-py, and none of ml_collections, clu, tensorflow
# and tensorflow-datasets, which nothing here imports. `wheels` downloads the pure-Python wheels
# of benchmarks/gpu_wheels.txt (flax, optax, orbax-checkpoint at the versions
# benchmarks/gpu_image_check.sh tests) into gpu_wheels/ ($GPU_WHEELS). A run installs them
# with pip (no index, no dependencies) into a folder of its own, on the PYTHONPATH after the
# checkout and before the image's packages and any PYTHONPATH it was given; without them it
# runs on the image's packages.
#
# In priority order, each command under its own time limit:
#   1. the backend (not a GPU: stop here), the devices and versions, an orbax save and
#      restore (benchmarks/gpu_check.py);
#   2. numerics: 30 float32 train steps of ResNet-20 and RegNet-20 ConvGRU at batch 32 on the
#      CPU, each also taken on the GPU from the same state, losses and parameter updates
#      compared within stated tolerances (benchmarks/numerics.py);
#   3. train throughput (benchmarks/throughput.py: steps dispatched without waiting and timed
#      until the last is done; compilation timed on its own, its row written first): ResNet-50
#      and RegNet-50 in bfloat16 at batch 256, MFU against 989 TFLOP/s (dense bfloat16 of an
#      H100 or H200 SXM); ResNet-20 and RegNet-20 ConvGRU in float32 at batch 64 (the paper's)
#      and 128, MFU against 495 TFLOP/s (dense TF32, which XLA uses for float32 convolutions
#      by default);
#   4. in the time left: ResNet-50 and RegNet-50 in float32 at batch 256.
#
# GPU_BENCHMARKS_CPU=1 runs the same commands on the CPU, shrunk (depth-8 networks, tiny
# batches, longer limits), with no backend check: the test of this script
# (tests/test_benchmarks.py) and, in a copy of the GPU image's packages,
# benchmarks/gpu_image_check.sh. PYTHON names the interpreter (default: python3).
set -u
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
wheels=${GPU_WHEELS:-$PWD/gpu_wheels}
if [ "${1:-}" = wheels ]; then
  rm -rf "$wheels"
  exec "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    -d "$wheels" -r benchmarks/gpu_wheels.txt
fi
if [ $# -ne 2 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 SECONDS OUT (e.g. $0 480 out), or: $0 wheels" >&2
  exit 2
fi
total=$1
mkdir -p "$2"
out=$(cd "$2" && pwd)
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
jsonl="$out/results.jsonl" logfile="$out/log.txt"
left() { echo $(( total - ($(date +%s) - start) )); }
log() { echo "[+$(( $(date +%s) - start ))s] $*" | tee -a "$logfile"; }
run() {  # run CAP NAME COMMAND...: the command for at most CAP (times $scale) seconds, as
  # many as are left; skipped when fewer than 10 are
  local b=$(( $1 * scale )) name=$2 rc
  shift 2
  (( b > $(left) )) && b=$(left)
  if (( b < 10 )); then log "$name: skipped, no time left"; return 1; fi
  log "$name: start (at most ${b}s)"
  timeout -k 10 "$b" "$@" >> "$logfile" 2>&1
  rc=$?
  log "$name: exit status $rc"
  return $rc
}

unset GPU_WHEELS_SITE
if compgen -G "$wheels/*.whl" > /dev/null; then
  if "$py" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" \
      "$wheels"/*.whl >> "$logfile" 2>&1; then
    export GPU_WHEELS_SITE="$work/site"
    log "installed the carried wheels: $(cd "$wheels" && echo *.whl)"
  else
    log "the carried wheels did not install (above): using the image's packages"
  fi
else
  log "no carried wheels in $wheels: using the image's packages"
fi
export PYTHONPATH="$PWD${GPU_WHEELS_SITE:+:$GPU_WHEELS_SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

if [ "${GPU_BENCHMARKS_CPU:-0}" = 1 ]; then
  scale=4  # a shared 2-core CPU compiles slowly
  check=(--allow_cpu) models50=(resnet20) shrink=(--model_args depth=8)
  numerics=(--batch_size 2 --steps 2 "${shrink[@]}")
  big=(--batch_size 2 --steps 2 --warmup 1 "${shrink[@]}")
  small=(--batch_size 2 4 --steps 2 --warmup 1 "${shrink[@]}")
else
  scale=1
  check=() models50=(resnet50 regnet50)
  numerics=(--batch_size 32 --steps 30)
  big=(--batch_size 256 --steps 30 --warmup 3)
  small=(--batch_size 64 128 --steps 200 --warmup 10)
fi
throughput=("$py" benchmarks/throughput.py --no_hugepages --no-eval --jsonl "$jsonl")
cap50() { [ "$1" = regnet50 ] && echo 200 || echo 120; }  # its unrolled stages compile longer

log "1. backend, versions, orbax"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$logfile" 2>&1
if ! run 60 check "$py" -m benchmarks.gpu_check --jsonl "$jsonl" "${check[@]}"; then
  log "the checks failed: stopping"
  exit 1
fi
log "2. numerics: the GPU's float32 steps against the CPU's"
run 150 numerics "$py" -m benchmarks.numerics --jsonl "$jsonl" "${numerics[@]}"
log "3. train throughput"
for m in "${models50[@]}"; do
  run "$(cap50 "$m")" "$m bfloat16" "${throughput[@]}" --models "$m" \
    --dtype bfloat16 --peak_tflops 989 "${big[@]}"
done
run 150 "resnet20 regnet20_gru float32" "${throughput[@]}" --models resnet20 regnet20_gru \
  --dtype float32 --peak_tflops 495 "${small[@]}"
log "4. the 50-layer networks in float32"
for m in "${models50[@]}"; do
  run "$(cap50 "$m")" "$m float32" "${throughput[@]}" --models "$m" \
    --dtype float32 --peak_tflops 495 "${big[@]}"
done
log "done"
