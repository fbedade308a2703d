#!/usr/bin/env bash
# Evaluation speed on NorQuAD dev, same machine, same run, CPU, batch 32, max length 256:
#   `splade eval` (release) vs sentence-transformers 6.2's SparseInformationRetrievalEvaluator,
#   encode and search reported separately, plus search-only time for 10k synthetic queries
#   (common/examples/bench_search.rs). Not part of the test suite.
#   scripts/bench/eval.sh [MODEL_DIR]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
source "$REPO/scripts/env.sh"
MODEL=${1:-$SPLADE_TEST_MODELS/splade-tiny}
cd "$REPO"
cargo build --release -q -p splade-worker --bin splade
cargo build --release -q -p splade-common --example bench_search
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/splade
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# warm-up: page cache and libtorch initialisation
"$BIN" encode --device cpu --model "$MODEL" "varm opp" > /dev/null
start=$(date +%s.%N)
"$BIN" eval --device cpu --model "$MODEL" --task data/norquad --max-length 256 --batch-size 32 > "$tmp/ours.txt" 2> "$tmp/ours.err"
end=$(date +%s.%N)
ours_total=$(echo "$end - $start" | bc -l)
# sentence-transformers: the evaluator's own wall time, and encode_document/encode_query timed alone.
HF_HUB_OFFLINE=1 "$SPLADE_REF_PY" - "$MODEL" > "$tmp/st.json" 2> "$tmp/st.err" <<'PY' || { cat "$tmp/st.err" >&2; exit 1; }
import json, os, subprocess, sys, time
model_dir = sys.argv[1]
r = subprocess.run([sys.executable, "scripts/reference/st_ir_eval.py", "--model", model_dir, "--task", "data/norquad",
                    "--split", "dev", "--max-length", "256", "--batch-size", "32"], capture_output=True, text=True, check=True)
total = json.loads(r.stdout.strip().splitlines()[-1])["evaluation_seconds"]
import torch
from sentence_transformers import SparseEncoder
torch.set_num_threads(max(1, os.cpu_count() or 1))
corpus = [json.loads(l) for l in open("data/norquad/corpus.jsonl")]
docs = [(d.get("title", "") + " " + d["text"]).strip() if d.get("title") else d["text"] for d in corpus]
rel = {l.split("\t")[0] for l in list(open("data/norquad/qrels/dev.tsv"))[1:]}
queries = [q["text"] for q in map(json.loads, open("data/norquad/queries.jsonl")) if q["_id"] in rel]
m = SparseEncoder(model_dir, device="cpu"); m.max_seq_length = 256
t = time.perf_counter(); m.encode_document(docs, batch_size=32); ed = time.perf_counter() - t
t = time.perf_counter(); m.encode_query(queries, batch_size=32); eq = time.perf_counter() - t
print(json.dumps({"total": total, "encode_docs": ed, "encode_queries": eq}))
PY
"$(dirname "$BIN")/examples/bench_search" data/norquad 10000 > "$tmp/search.txt" 2>&1
python3 - "$tmp" "$ours_total" <<'PY'
import json, os, re, sys
tmp, ours_total = sys.argv[1], float(sys.argv[2])
err = open(f"{tmp}/ours.err").read()
m = re.search(r"encoded (\d+) documents in ([\d.]+)s, (\d+) queries in ([\d.]+)s; index ([\d.]+)s, search ([\d.]+)s", err)
if not m:
    sys.exit(f"cannot find timings in splade eval's stderr:\n{err}")
nd, ed, nq, eq, ix, se = m.groups()
ed, eq, ix, se = map(float, (ed, eq, ix, se))
st = json.load(open(f"{tmp}/st.json"))
st_search = st["total"] - st["encode_docs"] - st["encode_queries"]
ours_eval = ed + eq + ix + se
print(f"NorQuAD dev: {nd} passages, {nq} queries; batch 32, max length 256; CPU ({os.cpu_count()} cores)")
print("| step | splade eval (s) | sentence-transformers (s) | speed-up |")
print("|---|---|---|---|")
def row(name, a, b):
    print(f"| {name} | {a:.3f} | {b:.3f} | {b / a if a > 0 else float('inf'):.2f}x |")
row("encode documents", ed, st["encode_docs"])
row("encode queries", eq, st["encode_queries"])
row("index + search (ST: evaluator total − encode, derived)", ix + se, max(st_search, 0.0))
row("whole evaluation (ST: evaluator wall time)", ours_eval, st["total"])
print(f"| splade eval process incl. model load, task load, metrics | {ours_total:.3f} | | |")
print()
print("search only, 10k synthetic queries on the NorQuAD corpus (common/examples/bench_search.rs):")
print(open(f"{tmp}/search.txt").read().strip())
PY
