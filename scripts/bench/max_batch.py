#!/usr/bin/env python3
"""The largest training batch that fits in a memory budget, `splade train` vs sentence-transformers.

For each case (SPLADE-tiny, MiniLM with a tied MLM head, XLM-R base) and each side, trains 2 steps at
growing batch sizes (doubling from 32, then bisecting to a multiple of 8; when 32 does not fit, halving
from 32 until a batch fits, then bisecting to a quarter of it) on the NorQuAD pairs at max length 256
(plain batch sampler on both sides: `no_duplicates` cannot fill batches larger than the distinct
passages) and records the peak RSS of the whole process tree. A run whose RSS passes the budget is
stopped there (so the machine never needs more than the budget) and counts as not fitting. The whole
search stops with an error when the machine's MemAvailable falls below --reserve-mb (others' processes
plus ours would exhaust the machine; a probe must not decide that). Prints a table, then each side's
second-step samples/s at its largest batch with the achieved FLOP/s (scripts/bench/flops.py: count,
formula and the GEMM peak measured here). Not part of the test suite; called by
scripts/bench/max-batch.sh, which builds the binary and the models.

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


def mem_available_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def run(cmd, budget_mb, reserve_mb, stdout=subprocess.DEVNULL, env=None):
    """Runs `cmd`; returns (fits, peak tree RSS in MB). Stops it as soon as the RSS passes the budget, and
    stops everything when the machine's available memory falls below `reserve_mb`."""
    with tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=err_file, env=env, text=True)
        peak = 0.0

        def kill():
            subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)])
            proc.kill()
            proc.wait()

        while proc.poll() is None:
            peak = max(peak, tree_rss_mb(proc.pid))
            if peak > budget_mb:
                kill()
                return False, peak
            avail = mem_available_mb()
            if avail < reserve_mb:
                kill()
                sys.exit(f"stopped {' '.join(cmd)} at {peak:.0f} MB: the machine has {avail:.0f} MB left "
                         f"(< --reserve-mb {reserve_mb:.0f}); other processes hold the rest, retry when it is quieter")
            time.sleep(0.05)
        err_file.seek(0)
        err = err_file.read()
    if proc.returncode != 0:
        if "out of memory" in err.lower() or proc.returncode in (-9, 137):
            return False, peak
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return True, peak


def second_step_samples_per_s(metrics_path, batch):
    """`splade train`'s steady-state samples/s (first step excluded) from its metrics.jsonl."""
    with open(metrics_path) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    t = [r["values"]["train/step_seconds"] for r in rows
         if r.get("type") == "scalars" and "train/step_seconds" in r.get("values", {})][1:]
    return batch * len(t) / sum(t) if t else None


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
    fits, peak = run([args.bin, "train", "--config", cfg], args.budget_mb, args.reserve_mb)
    speed = second_step_samples_per_s(f"{tmp}/out-{batch}/metrics.jsonl", batch) if fits else None
    return fits, peak, speed


def theirs(args, model, batch, tmp):
    with tempfile.TemporaryFile("w+") as out:
        fits, peak = run([args.ref_py, "scripts/reference/bench_train.py", "--model", model, "--data", args.data,
                          "--batch-size", str(batch), "--max-length", str(args.max_length), "--steps", "2", "--batch-sampler", "batch_sampler",
                          "--out-dir", os.path.join(tmp, f"st-{batch}")], args.budget_mb, args.reserve_mb, stdout=out,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
        out.seek(0)
        lines = out.read().strip().splitlines()
    return fits, peak, json.loads(lines[-1])["samples_per_s"] if fits and lines else None


def largest(side, args, model, tmp, log):
    """Largest multiple of 8 that fits: double from 32, then bisect. When 32 does not fit: halve until a
    batch fits, then bisect in steps of a quarter of it (at least 1)."""
    tried = {}

    def fits(b):
        if b not in tried:
            tried[b] = side(args, model, b, tmp)
            log(b, *tried[b][:2])
        return tried[b][0]

    lo, hi = 0, 32
    if not fits(hi):
        b = hi // 2
        while b >= 1 and not fits(b):
            hi, b = b, b // 2
        if b < 1:
            return 0, tried
        lo, step = b, max(1, b // 4)
        while hi - lo > step:
            mid = lo + (hi - lo) // (2 * step) * step
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo, tried
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
    p.add_argument("--reserve-mb", type=float, default=1536, help="stop everything when the machine's MemAvailable falls below this")
    p.add_argument("--case", action="append", required=True, help="NAME=MODEL_DIR")
    args = p.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}", file=sys.stderr, flush=True)
    peak = json.loads(subprocess.run([args.ref_py, os.path.join(here, "flops.py"), "peak"], capture_output=True, text=True, check=True).stdout)
    rows, speeds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.case:
            name, model = case.split("=", 1)
            got = {}
            for label, side in (("splade train", ours), ("sentence-transformers", theirs)):
                def log(b, ok, rss):
                    print(f"{name} / {label}: batch {b}: {'fits' if ok else 'does not fit'} (peak {rss:.0f} MB)", file=sys.stderr, flush=True)
                got[label], tried = largest(side, args, model, tmp, log)
                n = got[label]
                if n and tried[n][2]:
                    f = json.loads(subprocess.run(
                        [args.ref_py, os.path.join(here, "flops.py"), "step", "--model", model, "--data", args.data,
                         "--batch-size", str(n), "--max-length", str(args.max_length)],
                        capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout.splitlines()[-1])
                    achieved = f["flops_per_step"] * tried[n][2] / n
                    speeds.append((name, label, n, tried[n][1], tried[n][2], achieved))
            a, b = got["splade train"], got["sentence-transformers"]
            rows.append((name, a, b))
    cap = args.max_batch // 8 * 8
    mark = lambda n: f"≥ {n}" if n >= cap else str(n)
    print(f"Largest batch within {args.budget_mb:.0f} MB peak RSS, max length {args.max_length}, 2 steps, CPU")
    print("| case | splade train | sentence-transformers | ratio |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        ratio = f"{a / b:.2f}x" if b else ("inf" if a else "-")
        print(f"| {name} | {mark(a)} | {mark(b)} | {'≥ ' if a >= cap else ''}{ratio} |")
    print()
    print(f"At the largest batch (step 2 of 2; GEMM peak: fp32 {peak['fp32_flops'] / 1e9:.1f}, bf16 "
          f"{peak['bf16_flops'] / 1e9:.1f} GFLOP/s, torch.matmul {peak['n']}x{peak['n']}, {peak['threads']} threads)")
    print("| case | side | batch | peak RSS MB | samples/s | GFLOP/s | % of fp32 peak | % of bf16 peak |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label, n, rss, sps, achieved in speeds:
        print(f"| {name} | {label} | {n} | {rss:.0f} | {sps:.2f} | {achieved / 1e9:.1f} | "
              f"{100 * achieved / peak['fp32_flops']:.1f}% | {100 * achieved / peak['bf16_flops']:.1f}% |")
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
