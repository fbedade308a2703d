"""FLOP counts for the training benchmarks, and this machine's GEMM peak. Run in the reference venv.

    flops.py peak [--n 4096] [--reps 5]
        fp32 and bf16 GEMM peak: the best of REPS `torch.matmul` of two N×N matrices on all cores
        (2·N³ FLOP each), through the same oneDNN/MKL kernels libtorch uses for our Linear layers.
        Prints {"fp32_flops": F, "bf16_flops": F, "threads": T, "n": N}.
    flops.py step --model DIR --data train.jsonl.gz --batch-size B --max-length L [--samples 2000]
        the model FLOPs of one training step on the (anchor, positive) pairs. Prints
        {"flops_per_step": F, "mean_query_len": ..., "mean_doc_len": ..., "formula": "..."}.

The count (same for both sides, so the FLOP/s ratio is the samples/s ratio): a step encodes B queries
padded to the longest of them and B documents padded to the longest of them (both sides pad per batch,
truncation to L); its FLOPs are the expectation over 2000 random batches (seed 0) of
    3 · Σ_{queries, documents} [ B·T·(layers·linear + head) + B·layers·attention(T) ]
with T the batch's padded length, 3 = forward + backward (backward = 2 × forward), per token and layer
(H hidden, I intermediate, V vocabulary, a multiply-add = 2 FLOP):
    BERT / XLM-R:   linear = 2·(4H² + 2HI),  attention(T) = 2·2·T²·H (QKᵀ, AV)
    NorBERT3:       linear = 2·(4H² + 3HI)  (GeGLU: H→2I, I→H),
                    attention(T) = 2·4·T²·H (QKᵀ, the two relative-position terms, AV)
    GPT-BERT:       linear = 2·(H·2·n·d_qk + 2·H·n·d_v + 3HI),  attention(T) = 2·T²·n·(d_qk + d_v)
    ModernBERT:     linear = 2·(4H² + 3HI),  attention(T) = 2·2·T²·H
    head (all):     2·(H² + H·V) per token (transform + vocabulary projection)
counted on every padded position, full T×T attention (the reference's eager path computes it before
masking windows) and without embedding gathers, norms, activations, softmax, pooling and the loss.
Our lean head skips padded positions, so for us this is model FLOPs, not executed FLOPs.
"""
import argparse, gzip, json, os, random, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch


def peak(a):
    torch.set_num_threads(os.cpu_count() or 1)
    out = {"threads": torch.get_num_threads(), "n": a.n}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(a.n, a.n, generator=g).to(dtype)
        y = torch.randn(a.n, a.n, generator=g).to(dtype)
        torch.matmul(x, y)  # warm-up (kernel choice, page faults)
        best = float("inf")
        for _ in range(a.reps):
            t = time.perf_counter()
            torch.matmul(x, y)
            best = min(best, time.perf_counter() - t)
        out[f"{name}_flops"] = 2 * a.n ** 3 / best
    print(json.dumps(out))


def per_token_and_attention(cfg):
    """(linear FLOPs per token per layer, attention FLOPs per T², layers, head FLOPs per token)."""
    arch = (cfg.get("architectures") or [""])[0]
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head = 2 * (H * H + H * V)
    if arch.startswith("Norbert"):
        return 2 * (4 * H * H + 3 * H * I), 2 * 4 * H, cfg["num_hidden_layers"], head, "NorBERT3"
    if arch.startswith("GptBert"):
        n, dqk, dv = cfg["num_attention_heads"], cfg["query_key_head_size"], cfg["value_head_size"]
        return 2 * (H * 2 * n * dqk + 2 * H * n * dv + 3 * H * I), 2 * n * (dqk + dv), cfg["num_layers"], head, "GPT-BERT"
    if arch.startswith("ModernBert"):
        return 2 * (4 * H * H + 3 * H * I), 2 * 2 * H, cfg["num_hidden_layers"], head, "ModernBERT"
    return 2 * (4 * H * H + 2 * H * I), 2 * 2 * H, cfg["num_hidden_layers"], head, "BERT"


def step(a):
    from transformers import AutoTokenizer

    tdir = a.model
    modules = os.path.join(a.model, "modules.json")
    if os.path.exists(modules):  # a sentence-transformers folder: the MLM's own folder has the config
        for m in json.load(open(modules)):
            if m["type"].endswith("MLMTransformer") or m["type"].endswith(".Transformer"):
                tdir = os.path.join(a.model, m["path"])
    cfg = json.load(open(os.path.join(tdir, "config.json")))
    linear, att, layers, head, kind = per_token_and_attention(cfg)
    tok = AutoTokenizer.from_pretrained(tdir, trust_remote_code=True)
    rows = [json.loads(l) for l in gzip.open(a.data, "rt") if l.strip()]
    lens = {k: [len(x) for x in tok([r[k] for r in rows], truncation=True, max_length=a.max_length)["input_ids"]]
            for k in ("anchor", "positive")}
    rng = random.Random(0)
    total, tq, td = 0.0, 0, 0
    for _ in range(a.samples):
        idx = rng.sample(range(len(rows)), a.batch_size)
        for k in ("anchor", "positive"):
            T = max(lens[k][i] for i in idx)
            total += 3 * (a.batch_size * T * (layers * linear + head) + a.batch_size * layers * att * T * T)
            if k == "anchor":
                tq += T
            else:
                td += T
    print(json.dumps({
        "flops_per_step": total / a.samples, "mean_query_len": tq / a.samples, "mean_doc_len": td / a.samples,
        "formula": kind,
    }))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("peak")
    pk.add_argument("--n", type=int, default=4096)
    pk.add_argument("--reps", type=int, default=5)
    st = sub.add_parser("step")
    st.add_argument("--model", required=True)
    st.add_argument("--data", required=True)
    st.add_argument("--batch-size", type=int, default=32)
    st.add_argument("--max-length", type=int, default=256)
    st.add_argument("--samples", type=int, default=2000)
    a = p.parse_args()
    peak(a) if a.cmd == "peak" else step(a)


if __name__ == "__main__":
    main()
