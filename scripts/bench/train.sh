#!/usr/bin/env bash
# Benchmark: `splade train` vs sentence-transformers' SparseEncoderTrainer, same machine, same run,
# same NorQuAD pairs, model, batch, max length and number of steps. Prints samples/s (steady state,
# first step excluded), peak RSS and the ratios. Not part of the test suite.
#   scripts/bench/train.sh [STEPS] [BATCH] [MAXLEN] [CASES...]   CASES: tiny minilm (default both)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
source "$REPO/scripts/env.sh"
cd "$REPO"
STEPS=${1:-6}; BATCH=${2:-32}; MAXLEN=${3:-256}; shift $(( $# > 3 ? 3 : $# )) || true
CASES=${*:-tiny minilm}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SPLADE_CACHE/target}
cargo build --release -q -p splade-worker --bin splade
BIN=$CARGO_TARGET_DIR/release/splade
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "| case | side | samples/s | peak RSS MB |"
echo "|---|---|---|---|"
for case in $CASES; do
  case $case in
    tiny) MODEL=$SPLADE_TEST_MODELS/splade-tiny ;;
    minilm) MODEL=$tmp/minilm-splade
            "$SPLADE_REF_PY" scripts/reference/st_reference.py make-tied --base "$SPLADE_TEST_MODELS/minilm" --out "$MODEL" --max-length "$MAXLEN" 2>/dev/null ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
  cat > "$tmp/$case.yaml" <<YAML
model: {base_model: $MODEL}
training:
  output_dir: $tmp/out-$case
  max_steps: $STEPS
  per_device_train_batch_size: $BATCH
  max_seq_length: $MAXLEN
  learning_rate: 2.0e-5
  batch_sampler: no_duplicates
  save_strategy: "no"
  logging_steps: 1000
loss: {query_regularizer_weight: 5.0e-3, document_regularizer_weight: 3.0e-3}
datasets: {norquad: {source: data/norquad/train.jsonl.gz}}
hardware: {device: cpu}
YAML
  /usr/bin/time -f '%M' -o "$tmp/rss-$case" "$BIN" train --config "$tmp/$case.yaml" >/dev/null 2>&1
  ours=$(python3 -c "
import json; s=[json.loads(l) for l in open('$tmp/out-$case/metrics.jsonl')]
t=[x['values']['train/step_seconds'] for x in s if x.get('type')=='scalars' and 'train/step_seconds' in x.get('values',{})][1:]
print($BATCH*len(t)/sum(t))")
  ours_rss=$(( $(cat "$tmp/rss-$case") / 1024 ))
  theirs=$("$SPLADE_REF_PY" scripts/reference/bench_train.py --model "$MODEL" --data data/norquad/train.jsonl.gz \
    --batch-size "$BATCH" --max-length "$MAXLEN" --steps "$STEPS" --out-dir "$tmp/st-$case" 2>/dev/null | tail -1)
  python3 - "$case" "$ours" "$ours_rss" "$theirs" <<'PY'
import json, sys
case, ours, rss, t = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
print(f"| {case} | splade train | {ours:.2f} | {rss:.0f} |")
print(f"| {case} | sentence-transformers | {t['samples_per_s']:.2f} | {t['peak_rss_mb']:.0f} |")
print(f"| {case} | ratio | {ours / t['samples_per_s']:.2f}x | {rss / t['peak_rss_mb']:.2f}x |")
PY
done
