#!/usr/bin/env bash
# Benchmark: `splade encode` vs sentence-transformers encode_document on the 755 NorQuAD passages,
# batch 32, max length 256, same machine, same run. Not part of the test suite.
#   scripts/bench/encode.sh [MODEL_DIR]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
source "$REPO/scripts/env.sh"
MODEL=${1:-$SPLADE_TEST_MODELS/splade-tiny}
cd "$REPO"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SPLADE_CACHE/target}
cargo build --release -q -p splade-worker --bin splade
BIN=$CARGO_TARGET_DIR/release/splade
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -c "
import json,sys
with open('$tmp/corpus.jsonl','w') as f:
    for l in open('data/norquad/corpus.jsonl'):
        d=json.loads(l); f.write(json.dumps({'_id':d['_id'],'text':(d['title']+' '+d['text']).strip()}, ensure_ascii=False)+'\n')"
n=$(wc -l < "$tmp/corpus.jsonl")
# warm-up (page cache, libtorch init)
head -8 "$tmp/corpus.jsonl" > "$tmp/warm.jsonl"; "$BIN" encode --device cpu --model "$MODEL" --input "$tmp/warm.jsonl" --json > /dev/null
start=$(date +%s.%N)
/usr/bin/time -f '%M' -o "$tmp/rss" "$BIN" encode --device cpu --model "$MODEL" --document --input "$tmp/corpus.jsonl" \
  --batch-size 32 --max-length 256 --json > "$tmp/ours.jsonl"
end=$(date +%s.%N)
ours_s=$(echo "$end - $start" | bc -l)
ours_rss=$(( $(cat "$tmp/rss") / 1024 ))
theirs=$("$SPLADE_REF_PY" scripts/reference/bench_encode.py --model "$MODEL" --corpus data/norquad/corpus.jsonl --batch-size 32 --max-length 256 2>/dev/null | tail -1)
python3 - "$n" "$ours_s" "$ours_rss" "$theirs" <<'PY'
import json, sys
n, s, rss, theirs = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
ours = n / s
print(f"encode: {n} NorQuAD passages, batch 32, max length 256, CPU ({__import__('os').cpu_count()} cores)")
print(f"| side | texts/s | wall s | peak RSS MB |")
print(f"|---|---|---|---|")
print(f"| splade encode (whole process) | {ours:.1f} | {s:.2f} | {rss:.0f} |")
print(f"| sentence-transformers encode_document | {theirs['texts_per_s']:.1f} | {theirs['seconds']:.2f} | {theirs['peak_rss_mb']:.0f} |")
print(f"| ratio | {ours/theirs['texts_per_s']:.2f}x | | {rss/theirs['peak_rss_mb']:.2f}x |")
PY
