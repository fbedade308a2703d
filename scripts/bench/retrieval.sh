#!/usr/bin/env bash
# Retrieval quality on NorQuAD dev (data/norquad): BM25, SPLADE truncated to 256 tokens, SPLADE with
# windowed documents (254:127, element-wise max), and hybrid SPLADE+BM25 by RRF (k = 60, not tuned),
# for SPLADE-tiny and, if given, a trained model folder. Release build, CPU. Not part of the test suite.
#   scripts/bench/retrieval.sh [TRAINED_MODEL_DIR ...]      (e.g. runs/quickstart/final)
#   WINDOW=254:127 MAXLEN=256 scripts/bench/retrieval.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
source "$REPO/scripts/env.sh"
cd "$REPO"
WINDOW=${WINDOW:-254:127}
MAXLEN=${MAXLEN:-256}
models=("$SPLADE_TEST_MODELS/splade-tiny")
for m in "$@"; do
  if [ -e "$m/config.json" ] || [ -e "$m/modules.json" ]; then models+=("$m"); else echo "skipping $m: not a model folder" >&2; fi
done
# SPLADE_BIN=path/to/splade skips the build (e.g. an already built optimised binary).
if [ -z "${SPLADE_BIN:-}" ]; then cargo build --release -q -p splade-worker --bin splade; fi
BIN=${SPLADE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/splade}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
rows="$tmp/rows.tsv"; : > "$rows"
for m in "${models[@]}"; do
  name=$(basename "$(dirname "$m")")/$(basename "$m")
  common=(eval --device cpu --model "$m" --task data/norquad --max-length "$MAXLEN" --rrf-k 60)
  "$BIN" "${common[@]}" --bm25 --hybrid bm25 --output "$tmp/trunc" > "$tmp/trunc.txt" 2> "$tmp/trunc.err" || { cat "$tmp/trunc.err" >&2; exit 1; }
  "$BIN" "${common[@]}" --doc-window "$WINDOW" --hybrid bm25 --output "$tmp/win" > "$tmp/win.txt" 2> "$tmp/win.err" || { cat "$tmp/win.err" >&2; exit 1; }
  python3 - "$name" "$tmp" "$WINDOW" "$MAXLEN" >> "$rows" <<'PY'
import json, sys
name, tmp, window, maxlen = sys.argv[1:]
def table(path):
    lines = [l for l in open(path) if l.strip()]
    i = max(k for k, l in enumerate(lines) if l.startswith("task "))
    cols = lines[i].split()[1:]
    out = {}
    for l in lines[i + 1:]:
        label, rest = l[: l.index(")") + 1], l[l.index(")") + 1:].split()
        out[label.split("(")[1].rstrip(")")] = dict(zip(cols, map(float, rest)))
    return out
t, w = table(f"{tmp}/trunc.txt"), table(f"{tmp}/win.txt")
ex = json.load(open(f"{tmp}/win/norquad.json"))
entry = next(iter(ex["scores"].values()))[0]
dw = entry.get("document_windows", {})
cost = f"{dw.get('windows', '?')} windows, {dw.get('windows_per_document', 0):.2f}/doc"
rows = [("BM25", t["bm25"], ""), (f"SPLADE truncated ({maxlen})", t["splade"], ""),
        (f"SPLADE windowed ({window})", w["splade"], cost),
        ("SPLADE truncated + BM25 (RRF k=60)", t["splade+bm25"], ""),
        (f"SPLADE windowed + BM25 (RRF k=60)", w["splade+bm25"], "")]
for label, m, note in rows:
    print("\t".join([name, label, f"{m['ndcg_at_10']:.4f}", f"{m['mrr_at_10']:.4f}", f"{m.get('recall_at_100', float('nan')):.4f}", note]))
PY
done
echo "NorQuAD dev ($(wc -l < data/norquad/qrels/dev.tsv) qrels lines, $(wc -l < data/norquad/corpus.jsonl) passages), CPU, max length $MAXLEN"
echo "| model | method | nDCG@10 | MRR@10 | R@100 | cost |"
echo "|---|---|---|---|---|---|"
awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}' "$rows"
