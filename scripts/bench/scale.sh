#!/usr/bin/env bash
# Benchmark (not part of the test suite): data at the seed's scale. Generates synthetic rows with NorQuAD-like
# text lengths (a ~60-character question, a ~700-character passage) and measures, for each case:
#   plan s          the coordinator's start to "data plan published" (streaming pass, plan, artifact written)
#   coord peak MB   its VmHWM then; coord steady MB: its VmRSS 5 s later (after malloc_trim)
#   plan MB         the published artifact (manifest + chunks) under output_dir/data-plan/
#   train peak MB   `splade train`'s VmHWM at its last line before step 1
#   samples/s       `splade train`, SPLADE-tiny, batch 32, max length 128: 40 steps after 10 warm-up steps,
#                   reading every row through the plan's index (the only data path; there is no in-memory
#                   CLI path to compare against any more)
#   scripts/bench/scale.sh [ROWS...]        default: 1000000 s3:1000000 10000000 (s3:N puts the file on moto S3)
# Binaries: $BIN_DIR (default: a release build into $CARGO_TARGET_DIR).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
source "$REPO/scripts/env.sh"
cd "$REPO"
CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(1000000 s3:1000000 10000000)
if [ -z "${BIN_DIR:-}" ]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SPLADE_CACHE/target}
  cargo build --release -q -p splade-worker --bin splade -p splade-coordinator --bin splade-coordinator
  BIN_DIR=$CARGO_TARGET_DIR/release
fi
MODEL=$SPLADE_TEST_MODELS/splade-tiny
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

gen() { # gen N FILE
  python3 - "$1" "$2" <<'PY'
import random, sys, json
n, path = int(sys.argv[1]), sys.argv[2]
words = "fjord bokmål nynorsk skole havet fjellet byen kongen elva landet stortinget regjeringen kommune fylke".split()
r = random.Random(7)
with open(path, "w") as f:
    for i in range(n):
        q = f"{i} " + " ".join(r.choice(words) for _ in range(9))
        p = f"{i} " + " ".join(r.choice(words) for _ in range(95))
        f.write(json.dumps({"anchor": q, "positive": p}, ensure_ascii=False) + "\n")
PY
}

kb() { awk -v k="$2" '$1==k {print int($2/1024)}' "/proc/$1/status"; }

# wait_for PID LOG MARKER: until LOG has MARKER (or the process ends).
wait_for() { while ! grep -q "$3" "$2"; do kill -0 "$1" 2>/dev/null || { cat "$2" >&2; return 1; }; sleep 0.2; done; }

config() { # config SOURCE OUT STEPS
  cat <<EOF
model:
  base_model: $MODEL
training:
  output_dir: $2
  per_device_train_batch_size: 32
  max_steps: $3
  batch_sampler: no_duplicates
  max_seq_length: 128
  report_to: none
  save_strategy: "no"
  logging_steps: 10
datasets:
  rows:
    source: $1
hardware:
  device: cpu
cluster:
  min_workers: 1
  max_workers: 1
EOF
}

S3_ENV=()
start_moto() {
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$SPLADE_TOOLS_PY" -m moto.server -H 127.0.0.1 -p "$port" > "$tmp/moto.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$port" > /dev/null && break; sleep 0.2; done
  S3_ENV=(AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1)
  env "${S3_ENV[@]}" "$SPLADE_TOOLS_PY" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$port').create_bucket(Bucket='bench')"
}

rows=()
for case in "${CASES[@]}"; do
  n=${case#s3:}; file="$tmp/rows-$n.jsonl"
  [ -f "$file" ] || gen "$n" "$file"
  source_url=$file; envs=()
  if [[ $case == s3:* ]]; then
    [ ${#S3_ENV[@]} -gt 0 ] || start_moto
    env "${S3_ENV[@]}" "$SPLADE_TOOLS_PY" -c "
import boto3, os; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).upload_file('$file', 'bench', 'rows-$n.jsonl')"
    source_url=s3://bench/rows-$n.jsonl; envs=("${S3_ENV[@]}")
  fi
  steps=$(( n / 32 < 50 ? n / 32 : 50 ))
  out="$tmp/out-$case"; config "$source_url" "$out" -1 | sed 's/  max_steps: -1/  max_steps: -1\n  num_train_epochs: 1/' > "$tmp/coord.yaml"
  # Coordinator: start to "data plan published".
  : > "$tmp/coord.log"; : > "$tmp/train.log"   # empty before the start: wait_for must not see the last case's
  t0=$(date +%s.%N)
  env "${envs[@]}" SPLADE_CLUSTER_TOKEN=bench "$BIN_DIR/splade-coordinator" --config "$tmp/coord.yaml" --listen 127.0.0.1:0 > /dev/null 2> "$tmp/coord.log" & cp=$!; pids+=($cp)
  wait_for $cp "$tmp/coord.log" "data plan published"
  plan_s=$(echo "$(date +%s.%N) - $t0" | bc -l)
  coord_peak=$(kb $cp VmHWM:); sleep 5; coord_steady=$(kb $cp VmRSS:)
  kill $cp; wait $cp 2>/dev/null || true
  plan_mb=$(du -sm "$out/data-plan" | cut -f1)
  # splade train: peak before step 1, then samples/s over steps 11..50.
  config "$source_url" "$out-train" "$steps" > "$tmp/train.yaml"
  env "${envs[@]}" "$BIN_DIR/splade" train --config "$tmp/train.yaml" > /dev/null 2> "$tmp/train.log" & tp=$!; pids+=($tp)
  wait_for $tp "$tmp/train.log" "reading the rows of each step through the data plan"
  train_peak=$(kb $tp VmHWM:)
  wait $tp
  sps=$(python3 - "$out-train/metrics.jsonl" <<'PY'
import json, sys
t = {}
for l in open(sys.argv[1]):
    d = json.loads(l)
    if d.get("type") == "scalars" and "time" in d: t[d["step"]] = d["time"]
s = sorted(t)
a, b = [x for x in s if x >= 10][0], s[-1]
print(f"{(b - a) * 32 / (t[b] - t[a]):.1f}" if b > a else "n/a")
PY
)
  rows+=("| $case | $(printf %.1f "$plan_s") | $coord_peak | $coord_steady | $plan_mb | $train_peak | $sps |")
done
echo "scale: NorQuAD-length synthetic rows, batch 32, no_duplicates; $(nproc) cores"
echo "| rows | plan s | coord peak MB | coord steady MB | plan MB | train peak MB (before step 1) | samples/s (index) |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
