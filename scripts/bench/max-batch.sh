#!/usr/bin/env bash
# Benchmark: the largest batch each side trains within a memory budget (default 16 GB peak RSS), max length
# 256 (MAXLEN=... to change it), on the NorQuAD pairs. The batch sizes depend on memory only, not on machine
# load; the samples/s and FLOP/s printed below the table do. Not part of the test suite.
#   scripts/bench/max-batch.sh [BUDGET_MB] [CASES...]   CASES (default: tiny minilm):
#     tiny, minilm                       SPLADE-tiny, MiniLM-L6 with a tied MLM head
#     xlmr-base, norbert3-xs, norbert4-6l random models in the real shapes (scripts/reference/make_bench_models.py)
#   xlmr-base (250k vocabulary) is slow: a probe of ours at batch 32 trains for minutes on 2 cores.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
source "$REPO/scripts/env.sh"
cd "$REPO"
BUDGET=${1:-16384}; MAXLEN=${MAXLEN:-256}; shift $(( $# > 0 ? 1 : 0 )) || true
CASES=${*:-tiny minilm}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SPLADE_CACHE/target}
cargo build --release -q -p splade-worker --bin splade
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
args=()
for case in $CASES; do
  case $case in
    tiny) args+=(--case "tiny=$SPLADE_TEST_MODELS/splade-tiny") ;;
    minilm) "$SPLADE_REF_PY" scripts/reference/st_reference.py make-tied --base "$SPLADE_TEST_MODELS/minilm" \
              --out "$tmp/minilm-splade" --max-length "$MAXLEN" 2>/dev/null
            args+=(--case "minilm=$tmp/minilm-splade") ;;
    xlmr-base|norbert3-xs|norbert4-6l)
            args+=(--case "$case=$("$SPLADE_REF_PY" scripts/reference/make_bench_models.py "$case" 2>/dev/null | tail -1)") ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
done
python3 scripts/bench/max_batch.py --bin "$CARGO_TARGET_DIR/release/splade" --ref-py "$SPLADE_REF_PY" --budget-mb "$BUDGET" --max-length "$MAXLEN" "${args[@]}"
