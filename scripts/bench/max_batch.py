#!/usr/bin/env python3
"""The largest training batch that fits in a memory budget, `splade train` vs sentence-transformers.

For each case (SPLADE-tiny, MiniLM with a tied MLM head) and each side, trains 2 steps at growing batch
sizes (doubling from 32, then bisecting to a multiple of 8) on the NorQuAD pairs at max length 256 (plain
batch sampler on both sides: `no_duplicates` cannot fill batches larger than the distinct passages) and
records the peak RSS of the whole process tree. A run whose RSS passes the budget is stopped there (so
the machine never needs more than the budget) and counts as not fitting. Prints a table. Not part of
the test suite; called by scripts/bench/max-batch.sh, which builds the binary and the MiniLM model.

    max_batch.py --bin target/release/splade --ref-py PY --budget-mb 16384 --case tiny=DIR --case minilm=DIR
"""
import argparse, json, os, subprocess, sys, tempfile, time


def tree_rss_mb(pid):
    """RSS of `pid` and all its descendants, in MB (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def run(cmd, budget_mb, env=None):
    """Runs `cmd`; returns (fits, peak tree RSS in MB). Stops it as soon as the RSS passes the budget."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        if peak > budget_mb:
            subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)])
            proc.kill()
            proc.wait()
            return False, peak
        time.sleep(0.05)
    err = proc.stderr.read()
    if proc.returncode != 0:
        if "out of memory" in err.lower() or proc.returncode in (-9, 137):
            return False, peak
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return True, peak


def ours(args, model, batch, tmp):
    cfg = os.path.join(tmp, f"ours-{batch}.yaml")
    with open(cfg, "w") as f:
        f.write(f"""model: {{base_model: {model}}}
training:
  output_dir: {tmp}/out-{batch}
  max_steps: 2
  per_device_train_batch_size: {batch}
  max_seq_length: {args.max_length}
  learning_rate: 2.0e-5
  batch_sampler: batch_sampler
  save_strategy: "no"
  logging_steps: 1000
loss: {{query_regularizer_weight: 5.0e-3, document_regularizer_weight: 3.0e-3}}
datasets: {{norquad: {{source: {args.data}}}}}
hardware: {{device: cpu}}
""")
    return run([args.bin, "train", "--config", cfg], args.budget_mb)


def theirs(args, model, batch, tmp):
    return run([args.ref_py, "scripts/reference/bench_train.py", "--model", model, "--data", args.data,
                "--batch-size", str(batch), "--max-length", str(args.max_length), "--steps", "2", "--batch-sampler", "batch_sampler",
                "--out-dir", os.path.join(tmp, f"st-{batch}")], args.budget_mb,
               env={**os.environ, "HF_HUB_OFFLINE": "1"})


def largest(side, args, model, tmp, log):
    """Largest multiple of 8 that fits: double from 32, then bisect."""
    tried = {}

    def fits(b):
        if b not in tried:
            tried[b] = side(args, model, b, tmp)
            log(b, *tried[b])
        return tried[b][0]

    lo, hi = 0, 32
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > args.max_batch:
            # The data bounds the search: report the cap when it fits (the table marks it with ≥).
            hi = args.max_batch // 8 * 8
            if hi <= lo or fits(hi):
                return max(lo, hi), tried
            break
    while hi - lo > 8:
        mid = (lo + hi) // 16 * 8
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo, tried


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--ref-py", required=True)
    p.add_argument("--data", default="data/norquad/train.jsonl.gz")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--budget-mb", type=float, default=16384)
    p.add_argument("--max-batch", type=int, default=1536, help="the largest batch tried (2 steps of it must fit in the data: NorQuAD has 3679 pairs)")
    p.add_argument("--case", action="append", required=True, help="NAME=MODEL_DIR")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.case:
            name, model = case.split("=", 1)
            got = {}
            for label, side in (("splade train", ours), ("sentence-transformers", theirs)):
                def log(b, ok, rss):
                    print(f"{name} / {label}: batch {b}: {'fits' if ok else 'does not fit'} (peak {rss:.0f} MB)", file=sys.stderr, flush=True)
                got[label], _ = largest(side, args, model, tmp, log)
            a, b = got["splade train"], got["sentence-transformers"]
            rows.append((name, a, b))
    cap = args.max_batch // 8 * 8
    mark = lambda n: f"≥ {n}" if n >= cap else str(n)
    print(f"Largest batch within {args.budget_mb:.0f} MB peak RSS, max length {args.max_length}, 2 steps, CPU")
    print("| case | splade train | sentence-transformers | ratio |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        ratio = f"{a / b:.2f}x" if b else "inf"
        print(f"| {name} | {mark(a)} | {mark(b)} | {'≥ ' if a >= cap else ''}{ratio} |")


if __name__ == "__main__":
    main()
