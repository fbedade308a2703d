#!/usr/bin/env bash
# GPU smoke test of the cluster path: one splade-coordinator and one CUDA splade-worker (NCCL,
# world size 1) train for about two minutes from local data; prints samples/s and peak GPU memory.
#
# For a machine with an NVIDIA GPU and PyTorch 2.11 in its `python3`; no Rust, no network.
#   scripts/gpu-smoke.sh BIN_DIR MODEL_DIR [DATA] [SECONDS]
# BIN_DIR   folder with splade-coordinator and splade-worker from `cargo build --release --features cuda`
# MODEL_DIR a local SparseEncoder / BERT MLM folder (e.g. the splade-tiny or a SPLADE checkpoint)
# DATA      training JSONL(.gz) with anchor/positive columns (default: data/norquad/train.jsonl.gz)
# SECONDS   how long to train (default 120)
# Precision: the job sets neither training.bf16 nor training.fp16, so the figures are fp32's.
set -euo pipefail
BIN=${1:?usage: gpu-smoke.sh BIN_DIR MODEL_DIR [DATA] [SECONDS]}
MODEL=${2:?usage: gpu-smoke.sh BIN_DIR MODEL_DIR [DATA] [SECONDS]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${3:-$ROOT/data/norquad/train.jsonl.gz}
SECS=${4:-120}
for f in "$BIN/splade-coordinator" "$BIN/splade-worker" "$MODEL" "$DATA"; do
  [ -e "$f" ] || { echo "gpu-smoke: $f does not exist" >&2; exit 2; }
done
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); torch $(python3 -c 'import torch; print(torch.__version__)')"

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/job.yaml" <<YAML
model:
  base_model: $MODEL
training:
  output_dir: $WORK/out
  per_device_train_batch_size: 32
  learning_rate: 2.0e-5
  max_steps: 100000
  max_seq_length: 256
  save_strategy: "no"
  logging_steps: 10
  report_to: none
datasets:
  smoke:
    source: $DATA
cluster:
  min_workers: 1
  max_workers: 1
  rendezvous_last_call: 0
  c10d_backend: nccl
YAML
export SPLADE_CLUSTER_TOKEN=gpu-smoke-$RANDOM$RANDOM
"$BIN/splade-coordinator" --config "$WORK/job.yaml" --listen "127.0.0.1:$PORT" > "$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
"$BIN/splade-worker" --join "127.0.0.1:$PORT" --device cuda:0 --advertise 127.0.0.1 > "$WORK/worker.log" 2>&1 &
WORKER=$!
PIDS+=($WORKER)
PEAK=0
END=$((SECONDS + SECS))
while [ $SECONDS -lt $END ] && kill -0 "$WORKER" 2>/dev/null; do
  USED=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  [ "$USED" -gt "$PEAK" ] && PEAK=$USED
  sleep 1
done
if ! kill -0 "$WORKER" 2>/dev/null; then
  echo "gpu-smoke: the worker exited early:" >&2; tail -n 30 "$WORK/worker.log" >&2; exit 1
fi
# The worker logs `samples_per_s` (mean since the generation started) on every step.
SPS=$(grep -o 'samples_per_s="\?[0-9.]*' "$WORK/worker.log" | tail -1 | grep -o '[0-9.]*$' || true)
STEP=$(grep -o ' step=[0-9]*' "$WORK/worker.log" | tail -1 | grep -o '[0-9]*' || true)
[ -n "$SPS" ] || { echo "gpu-smoke: no training step logged:" >&2; tail -n 30 "$WORK/worker.log" >&2; exit 1; }
echo "steps: $STEP  samples/s: $SPS  peak GPU memory (nvidia-smi, whole GPU): ${PEAK} MiB"
