#!/usr/bin/env bash
# Benchmark: the largest batch each side trains within a memory budget (default 16 GB peak RSS), SPLADE-tiny
# and MiniLM with a tied MLM head, max length 256, on the NorQuAD pairs. Memory only: the result does not
# depend on machine load. Not part of the test suite.
#   scripts/bench/max-batch.sh [BUDGET_MB] [CASES...]   CASES: tiny minilm (default both)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
source "$REPO/scripts/env.sh"
cd "$REPO"
BUDGET=${1:-16384}; shift $(( $# > 0 ? 1 : 0 )) || true
CASES=${*:-tiny minilm}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SPLADE_CACHE/target}
cargo build --release -q -p splade-worker --bin splade
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
args=()
for case in $CASES; do
  case $case in
    tiny) args+=(--case "tiny=$SPLADE_TEST_MODELS/splade-tiny") ;;
    minilm) "$SPLADE_REF_PY" scripts/reference/st_reference.py make-tied --base "$SPLADE_TEST_MODELS/minilm" \
              --out "$tmp/minilm-splade" --max-length 256 2>/dev/null
            args+=(--case "minilm=$tmp/minilm-splade") ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
done
python3 scripts/bench/max_batch.py --bin "$CARGO_TARGET_DIR/release/splade" --ref-py "$SPLADE_REF_PY" --budget-mb "$BUDGET" "${args[@]}"
