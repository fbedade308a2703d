"""sentence-transformers side of the parity tests and benchmarks (runs in the pinned reference venv).

Subcommands (all print or write JSON):
  encode --model DIR --input FILE --out FILE [--max-length N] [--trust-remote-code] [--batch-size N]
         [--max-active-dims N]
      FILE is a JSON list of {"text", "kind": "query"|"document"}; writes a list of
      {"indices", "values"} plus the load-time warnings, the model's prompts / max length and the
      sentence-transformers / transformers versions that ran (the seed's 5.2 / 4.57 stack when
      PYTHONPATH points at the light second reference). --trust-remote-code loads remote-code
      models (NorBERT3, GPT-BERT) as their users do: SparseEncoder(path, trust_remote_code=True).
  make-tied --base DIR --out DIR
      Builds a SparseEncoder from a bare BertModel (MLM head tied to the word embeddings, transform
      randomly initialised by transformers) and saves it, so both sides hold the same random head.
  make-inference-free --base DIR --out DIR [--max-length N] [--random-weights]
      Builds an inference-free SparseEncoder the documented way (Router.for_query_document: query
      route SparseStaticEmbedding over the MLM's tokenizer, document route MLMTransformer +
      SpladePooling) and saves it. --random-weights replaces the constructor's all-ones table by
      seeded random weights (some zero), so a loader that ignores the table cannot pass.
  make-csr --base DIR --out DIR [--hidden-dim N --k K --k-aux KA --normalize --dead-threshold N --max-length N]
      Builds a CSR SparseEncoder as sentence-transformers documents it: the base folder's own modules
      (Transformer, its Pooling and Normalize) followed by a SparseAutoEncoder whose parameters are
      all seeded random (pre_bias and latent_bias too, so a loader that drops either cannot pass),
      and saves it.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


def load_capturing(path, **kwargs):
    import torch
    from sentence_transformers import SparseEncoder

    torch.manual_seed(0)
    cap = Capture()
    root = logging.getLogger()
    root.addHandler(cap)
    for name in ("transformers", "sentence_transformers"):
        logging.getLogger(name).addHandler(cap)
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as ws, contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        warnings.simplefilter("always")
        model = SparseEncoder(path, device="cpu", **kwargs)
    msgs = cap.messages + [str(w.message) for w in ws] + [l for l in err.getvalue().splitlines() if l.strip()]
    return model, msgs


def remote_code_import_path(folder):
    """norbench's modeling_norbert.py (the NorBERT3 fixture's copy) imports its configuration
    absolutely (the Hub release imports it relatively): remote-code loading then needs the model's
    folders on sys.path. The Hub file needs nothing; the fixture's file needs this on 4.57 and 5.x."""
    for root, _dirs, files in os.walk(folder):
        if "configuration_norbert.py" in files and root not in sys.path:
            sys.path.insert(0, root)


def remote_code_post_init_shim():
    """transformers 5 sets `all_tied_weights_keys` (and more) in `PreTrainedModel.post_init()`, which every model
    class must call at the end of its __init__; norbench's modeling_norbert.py (the NorBERT3 fixture's copy, written
    for 4.x) never calls it, so loading fails with "no attribute 'all_tied_weights_keys'". The shim calls it after
    __init__ for every model class that did not. Nothing changes on 4.x, nor for classes that call it."""
    import transformers
    from transformers import PreTrainedModel

    if int(transformers.__version__.split(".")[0]) < 5:
        return
    original = PreTrainedModel.__init_subclass__.__func__ if hasattr(PreTrainedModel.__init_subclass__, "__func__") else None

    def init_subclass(cls, **kw):
        if original is not None:
            original(cls, **kw)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_post_init_shim", False):
            return

        def wrapped(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if type(self) is cls and "all_tied_weights_keys" not in self.__dict__:
                self.post_init()

        wrapped._post_init_shim = True
        cls.__init__ = wrapped

    PreTrainedModel.__init_subclass__ = classmethod(init_subclass)


def cmd_encode(a):
    import tempfile

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    kwargs = {}
    if a.trust_remote_code:
        os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="st-reference-modules-"))
        remote_code_import_path(a.model)
        remote_code_post_init_shim()
        kwargs["trust_remote_code"] = True
    model, msgs = load_capturing(a.model, **kwargs)
    if a.max_length:
        model.max_seq_length = a.max_length
    model.eval()
    items = json.load(open(a.input))
    out = [None] * len(items)
    for kind in ("query", "document"):
        idx = [i for i, it in enumerate(items) if it["kind"] == kind]
        if not idx:
            continue
        texts = [items[i]["text"] for i in idx]
        fn = model.encode_query if kind == "query" else model.encode_document
        with torch.no_grad():
            extra = {"max_active_dims": a.max_active_dims} if a.max_active_dims else {}
            emb = fn(texts, batch_size=a.batch_size, convert_to_tensor=True, convert_to_sparse_tensor=False, **extra)
        emb = emb.to_dense() if emb.is_sparse else emb
        for j, i in enumerate(idx):
            row = emb[j]
            nz = torch.nonzero(row, as_tuple=True)[0]
            out[i] = {"indices": nz.tolist(), "values": row[nz].tolist()}
    json.dump(
        {
            "embeddings": out,
            "warnings": msgs,
            "prompts": model.prompts,
            "max_seq_length": model.max_seq_length,
            "versions": {"sentence_transformers": __import__("sentence_transformers").__version__,
                         "transformers": __import__("transformers").__version__},
        },
        open(a.out, "w"),
    )


def cmd_make_tied(a):
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    torch.manual_seed(1234)
    mlm = MLMTransformer(a.base, max_seq_length=a.max_length)
    model = SparseEncoder(modules=[mlm, SpladePooling(pooling_strategy="max")], device="cpu")
    model.save(a.out)


def cmd_make_inference_free(a):
    import torch
    from sentence_transformers import SparseEncoder

    try:  # 6.x
        from sentence_transformers.base.modules import Router
        from sentence_transformers.sparse_encoder.modules import MLMTransformer, SparseStaticEmbedding, SpladePooling
    except ImportError:  # 5.x (the seed's stack)
        from sentence_transformers.models import Router
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SparseStaticEmbedding, SpladePooling

    mlm = MLMTransformer(a.base, max_seq_length=a.max_length)
    static = SparseStaticEmbedding(tokenizer=mlm.tokenizer, frozen=False)
    if a.random_weights:
        g = torch.Generator().manual_seed(1234)
        w = torch.rand(static.weight.shape, generator=g) * 3.0
        w[torch.rand(static.weight.shape, generator=g) < 0.2] = 0.0
        with torch.no_grad():
            static.weight.copy_(w)
    router = Router.for_query_document(query_modules=[static], document_modules=[mlm, SpladePooling(pooling_strategy="max")])
    model = SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
    model.save(a.out)


def cmd_make_csr(a):
    import torch
    from sentence_transformers import SentenceTransformer, SparseEncoder

    try:  # 6.x
        from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder
    except ImportError:  # 5.x
        from sentence_transformers.sparse_encoder.models import SparseAutoEncoder

    torch.manual_seed(1234)
    dense = SentenceTransformer(a.base, device="cpu")
    dense.max_seq_length = a.max_length
    modules = list(dense._modules.values())
    dim = dense.get_sentence_embedding_dimension()
    sae = SparseAutoEncoder(
        input_dim=dim, hidden_dim=a.hidden_dim, k=a.k, k_aux=a.k_aux, normalize=a.normalize, dead_threshold=a.dead_threshold
    )
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.randn(sae.encoder.weight.shape, generator=g) * 0.05)
        sae.pre_bias.copy_(torch.randn(sae.pre_bias.shape, generator=g) * 0.01)
        sae.latent_bias.copy_(torch.randn(sae.latent_bias.shape, generator=g) * 0.01)
    model = SparseEncoder(modules=modules + [sae], similarity_fn_name="dot", device="cpu")
    model.save(a.out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("--model", required=True)
    e.add_argument("--input", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--max-length", type=int)
    e.add_argument("--trust-remote-code", action="store_true")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-active-dims", type=int)
    t = sub.add_parser("make-tied")
    t.add_argument("--base", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--max-length", type=int, default=256)
    f = sub.add_parser("make-inference-free")
    f.add_argument("--base", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--max-length", type=int, default=128)
    f.add_argument("--random-weights", action="store_true")
    c = sub.add_parser("make-csr")
    c.add_argument("--base", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--hidden-dim", type=int, default=1536)
    c.add_argument("--k", type=int, default=32)
    c.add_argument("--k-aux", type=int, default=256)
    c.add_argument("--normalize", action="store_true")
    c.add_argument("--dead-threshold", type=int, default=30)
    c.add_argument("--max-length", type=int, default=128)
    a = p.parse_args()
    cmds = {"encode": cmd_encode, "make-tied": cmd_make_tied, "make-inference-free": cmd_make_inference_free, "make-csr": cmd_make_csr}
    cmds[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
