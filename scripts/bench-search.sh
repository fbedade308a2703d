#!/usr/bin/env bash
# Search-only timing of the evaluator's exact inverted index: 10k queries (default) on a task's corpus.
#   scripts/bench-search.sh [TASK_DIR] [N_QUERIES] [DOC_VECS.jsonl QUERY_VECS.jsonl]
# Without vector files it synthesises SPLADE-like vectors (see common/examples/bench_search.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -q --release -p splade-common --example bench_search -- "${1:-data/norquad}" "${2:-10000}" "${@:3}"
