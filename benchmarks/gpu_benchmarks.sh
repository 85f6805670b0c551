#!/usr/bin/env bash
# GPU measurements in one run of SECONDS (about 540 for 9 minutes on an H200). Every number is
# written the moment it is measured, and everything ends up in three files:
#
#   benchmarks/gpu_benchmarks.sh SECONDS OUT CIFAR_NPZ_DIR
#
#   OUT/results.jsonl    one JSON row per measurement, appended as it is taken
#   OUT/log.txt          what every command printed
#   OUT/results.tar.gz   both, and the CIFAR-10 runs' configs, event files and results table
#
# In priority order:
#   0. checks (fail fast): the backend is a GPU, the versions, an orbax save and restore;
#   1. ResNet-50 and RegNet-50: bfloat16 train throughput and MFU (989 TFLOP/s peak), batch 256;
#   2. the CIFAR train step of ResNet-20 and of each RegNet-20 cell, batch 128: synthetic
#      batches, then batches from the device-resident source (the regulator's cost on a GPU);
#   3. in the time left: ResNet-20 and RegNet-20 ConvGRU trained side by side on CIFAR-10 under
#      the 20-epoch protocol (configs/cifar10_reduced20.py, resident input), each stopped by a
#      deadline (inside an epoch if need be) that leaves time to pack the results.
#
# CIFAR_NPZ_DIR holds the offline CIFAR-10 copy (train-jpeg.npz, test-jpeg.npz) for part 3.
# GPU_BENCHMARKS_CPU=1 runs everything on the CPU, shrunk to a few minutes, with no backend
# check: the test of this script (tests/test_benchmarks.py).
set -u
total=$1 out=$2 npz=$3
start=$(date +%s)
mkdir -p "$out"
work=$(mktemp -d)
jsonl="$out/results.jsonl" logfile="$out/log.txt"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH="$PWD"
left() { echo $(( total - ($(date +%s) - start) )); }
log() { echo "[+$(( $(date +%s) - start ))s] $*" | tee -a "$logfile"; }
# budget CAP RESERVE: seconds a command may take: at most CAP (times $scale), leaving RESERVE
# for what follows; 0 (skip it) when fewer than 10 would be left.
budget() {
  local b=$(( $(left) - $2 )) cap=$(( $1 * scale ))
  (( b > cap )) && b=$cap; (( b >= 10 )) && echo "$b" || echo 0
}
run() {  # run CAP RESERVE NAME COMMAND...: the command under its budget, its status logged
  local cap=$1 reserve=$2 name=$3 b rc
  shift 3
  b=$(budget "$cap" "$reserve")
  if (( b == 0 )); then log "$name: skipped, no time left"; return 1; fi
  log "$name: start (at most ${b}s)"
  timeout "$b" "$@" >> "$logfile" 2>&1
  rc=$?
  log "$name: exit status $rc"
  return $rc
}
pack() {
  log "packing results"
  tar -czf "$out/results.tar.gz" -C "$out" results.jsonl log.txt -C "$work" \
    --exclude=checkpoints --exclude=tfds cifar 2>> "$logfile"
}

if [ "${GPU_BENCHMARKS_CPU:-0}" = 1 ]; then
  scale=4  # a shared 2-core CPU compiles slowly: more time per command, within SECONDS
  check_flags=--allow_cpu models50=resnet20 big=(--batch_size 2 --steps 1 --warmup 1)
  cifar_models="resnet20 regnet20_gru" small=(--batch_size 8 --steps 1 --warmup 1)
  train_flags=(--config.num_train_steps=6 --config.batch_size=16 --config.eval_every_steps=3
               --config.eval_precise_bn_batches=1)
else
  scale=1
  check_flags= models50="resnet50 regnet50" big=(--batch_size 256 --steps 20 --warmup 3)
  cifar_models="resnet20 regnet20_rnn regnet20_gru regnet20_lstm"
  small=(--batch_size 128 --steps 50 --warmup 5) train_flags=()
fi

log "0. checks"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$logfile" 2>&1
if ! run 180 0 check python3 -m benchmarks.gpu_check --jsonl "$jsonl" $check_flags; then
  log "the checks failed: stopping"
  pack
  exit 1
fi

log "1. 50-layer bfloat16 train throughput"
for m in $models50; do
  run 150 200 "throughput $m" python3 benchmarks/throughput.py --no_hugepages --models "$m" \
    --dtype bfloat16 --peak_tflops 989 "${big[@]}" --jsonl "$jsonl"
done

log "2. the CIFAR train step"
run 120 150 "cifar step" python3 benchmarks/throughput.py --no_hugepages \
  --models $cifar_models "${small[@]}" --jsonl "$jsonl"
run 90 150 "cifar step, resident source" python3 benchmarks/throughput.py --no_hugepages \
  --resident --models $cifar_models "${small[@]}" --jsonl "$jsonl"

log "3. CIFAR-10 side by side"
if run 120 90 "import cifar10" python3 -m regnet_jax.import_data --dataset=cifar10 \
    --source="$npz" --data_dir="$work/tfds"; then
  deadline=$(( $(left) - 45 ))
  pids=()
  for m in resnet20 regnet20_gru; do
    if (( deadline < 20 )); then log "train $m: skipped, no time left"; continue; fi
    log "train $m: start (deadline ${deadline}s)"
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 timeout $(( deadline + 30 )) python3 main.py \
      --config=configs/cifar10_reduced20.py:$m --config.input=resident \
      --config.data_dir="$work/tfds" --workdir="$work/cifar/$m" --deadline_s="$deadline" \
      --compilation_cache= "${train_flags[@]}" > "$work/train_$m.log" 2>&1 &
    pids+=("$m:$!")
  done
  for p in "${pids[@]}"; do
    wait "${p#*:}"
    log "train ${p%%:*}: exit status $?"
    grep -E "Stopped by|eval_top1_error|error:" "$work/train_${p%%:*}.log" | tail -4 >> "$logfile"
  done
  if (( ${#pids[@]} )); then
    run 60 5 "results table" python3 -m regnet_jax.analysis.results --out "$work/cifar" \
      --name gpu --workdirs "$work/cifar/"*
  fi
fi
pack
log "done"
