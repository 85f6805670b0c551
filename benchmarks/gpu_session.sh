#!/bin/bash
# One GPU lease's measurements, in one prepared run (docs/performance.md, docs/results.md):
#   1. the device-resident CIFAR step of ResNet-20, one step per call vs 50 in a scan, then the
#      same for RegNet-20 ConvGRU (issue #5's regulator target: at most 1.25x ResNet-20's step);
#   2. ResNet-50 / RegNet-50 bfloat16 train throughput and MFU at batch 256;
#   3. the paper's full CIFAR-10 schedule (configs/cifar.py: 150 epochs, batch 64) for MODELS,
#      side by side on the one GPU through the device-resident path (regnet_jax/resident.py),
#      until the time is up; each run's workdir (metrics.jsonl, config, newest checkpoint) comes
#      back as OUT/cifar_MODEL.tar.gz, so a later lease can resume it.
#
#   benchmarks/gpu_session.sh SECONDS OUT DATA [MODELS...]
#
# SECONDS bounds the whole script; DATA holds train-jpeg.npz and test-jpeg.npz, and optionally
# whl/ with wheels to install first (packages the GPU machine lacks, e.g. ml_collections).
# $RESIDENT_FLAGS is added to every training command (e.g. --config.num_epochs=1 for a try).
set -u
total=$1 out=$2 data=$3
shift 3
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(resnet20 regnet20_gru regnet20_lstm se_resnet20)
start=$(date +%s)
left() { echo $(( total - ($(date +%s) - start) )); }
log() { echo "[$(date -u +%T) +$(( $(date +%s) - start ))s] $*"; }
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

if compgen -G "$data/whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$data"/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import jax, flax, optax, orbax.checkpoint; print('jax', jax.__version__, 'flax',
flax.__version__, 'optax', optax.__version__, 'orbax', orbax.checkpoint.__version__, jax.devices())
from regnet_jax import models, resident, summary  # fail fast on an API this jax lacks
print('resnet20 MACs', summary.count_macs(models.create_model('resnet20', 10), 32))" || exit 1

log "1. device-resident CIFAR step: one step per call vs a scan of 50"
timeout 100 python3 benchmarks/throughput.py --no_hugepages --resident 1 50 --models resnet20 \
  --batch_size 64 --steps 200 --json "$out/resident_gpu.json"
per_call=$(python3 -c "import json; r = json.load(open('$out/resident_gpu.json'))
print('' if max(r, key=lambda x: x['train_img_s'])['steps_per_call'] > 1 else '--steps_per_call=1')
" 2>/dev/null)
log "resident rc=$? ${per_call:-(an epoch per call)}"
timeout 90 python3 benchmarks/throughput.py --no_hugepages --resident 1 50 --models regnet20_gru \
  --batch_size 64 --steps 200 --json "$out/resident_gpu_regnet20_gru.json"
log "regnet20_gru resident rc=$?"

log "2. ResNet-50 / RegNet-50 bfloat16 throughput"
for m in resnet50:100 regnet50:130; do  # model:seconds allowed (compilation included)
  timeout "${m#*:}" python3 benchmarks/throughput.py --no_hugepages --models "${m%:*}" \
    --batch_size 256 --dtype bfloat16 --steps 20 --warmup 3 --peak_tflops 989 \
    --json "$out/throughput_${m%:*}.json"
  log "${m%:*} rc=$?"
done

log "3. full CIFAR-10 schedule: ${models[*]}"
deadline=$(( $(left) - 45 ))
pids=()
for m in "${models[@]}"; do
  timeout $(( deadline + 30 )) python3 -m regnet_jax.resident \
    --config=configs/cifar.py:"$m" --config.keep_checkpoints=1 --workdir="/tmp/cifar/$m" \
    --npz_dir="$data" --deadline_s="$deadline" ${per_call:-} ${RESIDENT_FLAGS:-} > "/tmp/cifar_$m.log" 2>&1 &
  pids+=($!)
done
for i in "${!models[@]}"; do
  wait "${pids[$i]}"
  log "${models[$i]} rc=$?"
  grep -v "^[IW][0-9]" "/tmp/cifar_${models[$i]}.log" | tail -3
  cp "/tmp/cifar_${models[$i]}.log" "/tmp/cifar/${models[$i]}/run.log" 2>/dev/null
  tar -czf "$out/cifar_${models[$i]}.tar.gz" -C /tmp/cifar "${models[$i]}"
done
log "done"
