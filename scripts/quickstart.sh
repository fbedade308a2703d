#!/usr/bin/env bash
# The main job on a fresh machine: set up, train SPLADE-tiny on the bundled NorQuAD pairs
# (configs/quickstart.yaml, CPU), then evaluate the untrained and the trained model on NorQuAD dev.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
scripts/setup.sh
source scripts/env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SPLADE_CACHE/target}
cargo build --release -q -p splade-worker --bin splade
BIN=$CARGO_TARGET_DIR/release/splade
OUT=runs/quickstart  # configs/quickstart.yaml's training.output_dir: the evaluations read its final/ model
# A rerun starts over: committed checkpoints are never overwritten with other contents, and an earlier
# version of this job may have written different ones.
rm -rf "$OUT"
"$BIN" train --config configs/quickstart.yaml
"$BIN" eval --device cpu --model "$SPLADE_TEST_MODELS/splade-tiny" --max-length 256 --task data/norquad --output "$OUT/eval-untrained"
"$BIN" eval --device cpu --model "$OUT/final" --task data/norquad --output "$OUT/eval-trained" \
  --baseline "$OUT/eval-untrained/norquad.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def ndcg(p):
    r = json.load(open(p))
    return r["scores"]["dev"][0]["ndcg_at_10"]
b, t = ndcg(f"{out}/eval-untrained/norquad.json"), ndcg(f"{out}/eval-trained/norquad.json")
print(f"NorQuAD dev NDCG@10: untrained SPLADE-tiny {b:.4f} -> trained {t:.4f} ({t - b:+.4f})")
PY
