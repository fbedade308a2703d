#!/usr/bin/env bash
# Benchmark: `splade train` vs sentence-transformers' SparseEncoderTrainer, same machine, same run,
# same NorQuAD pairs, model, batch, max length and number of steps. Prints samples/s (steady state,
# first step excluded), peak RSS, the ratios, and the step's achieved FLOP/s against this machine's fp32
# and bf16 GEMM peak measured in the same run (the FLOP count and its formula: scripts/bench/flops.py).
# Not part of the test suite.
#   scripts/bench/train.sh [STEPS] [BATCH] [MAXLEN] [CASES...]   CASES (default: tiny minilm):
#     tiny        SPLADE-tiny
#     minilm      MiniLM-L6 with a tied MLM head
#     norbert3-xs NorBERT3 (reference remote code) in ltg/norbert3-xs's shape, random weights
#     norbert4-6l NorBERT4 / GPT-BERT (reference remote code, patched head) with the base model's sizes, 6 layers
#     xlmr-base   XLM-RoBERTa in xlm-roberta-base's shape, random weights
#   The random models are built by scripts/reference/make_bench_models.py into $SPLADE_CACHE/bench-models.
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
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
peak=$("$SPLADE_REF_PY" scripts/bench/flops.py peak)
python3 - "$peak" <<'PY'
import json, sys
p = json.loads(sys.argv[1])
print(f"GEMM peak (torch.matmul {p['n']}x{p['n']}, {p['threads']} threads): fp32 {p['fp32_flops'] / 1e9:.1f} GFLOP/s, bf16 {p['bf16_flops'] / 1e9:.1f} GFLOP/s")
PY
echo "| case | side | samples/s | peak RSS MB | GFLOP/s | % of fp32 peak | % of bf16 peak |"
echo "|---|---|---|---|---|---|---|"
for case in $CASES; do
  case $case in
    tiny) MODEL=$SPLADE_TEST_MODELS/splade-tiny ;;
    minilm) MODEL=$tmp/minilm-splade
            "$SPLADE_REF_PY" scripts/reference/st_reference.py make-tied --base "$SPLADE_TEST_MODELS/minilm" --out "$MODEL" --max-length "$MAXLEN" 2>/dev/null ;;
    norbert3-xs|norbert4-6l|xlmr-base) MODEL=$("$SPLADE_REF_PY" scripts/reference/make_bench_models.py "$case" 2>/dev/null | tail -1) ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
  flops=$("$SPLADE_REF_PY" scripts/bench/flops.py step --model "$MODEL" --data data/norquad/train.jsonl.gz \
    --batch-size "$BATCH" --max-length "$MAXLEN" 2>/dev/null | tail -1)
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
  python3 - "$case" "$ours" "$ours_rss" "$theirs" "$flops" "$peak" "$BATCH" <<'PY'
import json, sys
case, ours, rss, t, f, p, b = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5]), json.loads(sys.argv[6]), int(sys.argv[7])
def fl(samples_per_s):
    achieved = f["flops_per_step"] * samples_per_s / b
    return f"{achieved / 1e9:.1f} | {100 * achieved / p['fp32_flops']:.1f}% | {100 * achieved / p['bf16_flops']:.1f}%"
print(f"| {case} | splade train | {ours:.2f} | {rss:.0f} | {fl(ours)} |")
print(f"| {case} | sentence-transformers | {t['samples_per_s']:.2f} | {t['peak_rss_mb']:.0f} | {fl(t['samples_per_s'])} |")
print(f"| {case} | ratio | {ours / t['samples_per_s']:.2f}x | {rss / t['peak_rss_mb']:.2f}x | | | |")
print(f"<!-- {case}: {f['flops_per_step'] / 1e12:.3f} TFLOP per step ({f['formula']} count, mean padded lengths: queries {f['mean_query_len']:.1f}, documents {f['mean_doc_len']:.1f}) -->")
PY
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
