"""Reference forward and backward of a masked-LM folder, for the Rust encoders' parity tests.

    encoder_reference.py --model DIR --input in.json --out out.safetensors [--patch-sigmoid]

`in.json` is {"input_ids": [[...]], "attention_mask": [[...]], "probe_seed": N}: the batch is given as
token ids (the Rust side tokenizes; tokenizer parity is tested elsewhere), right-padded.

Writes, all float32 unless noted:
  last_hidden_state [B, L, H]  the encoder's final hidden states
  mlm_raw           [B, L, V]  the MLM head's output before any of the model's own post-processing
                                (NorBERT3's -inf ids, GPT-BERT's sigmoid and shift)
  logits            [B, L, V]  the model's `.logits` (with `--patch-sigmoid`: GPT-BERT without its
                                `30*sigmoid(x/7.5)`, as the seed's patch script writes it)
  splade            [B, V]     max over real tokens of log1p(relu(logits)) (padding never contributes)
  probe             [B, V]     a fixed N(0, 1) tensor (torch.manual_seed(probe_seed))
  grad.<name>                  d(sum(splade * probe))/d(parameter) for every named parameter, in eval
                                mode (no dropout), by the parameter's state-dict name

The model is loaded with transformers' AutoModelForMaskedLM; remote-code folders (`auto_map`) load with
trust_remote_code and the transformers-5 shims of ../shared/reference/remote-code/make_tiny.py (imported,
not copied), found through $SPLADE_REMOTE_CODE_DIR or beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file


def remote_code_dir() -> str:
    env = os.environ.get("SPLADE_REMOTE_CODE_DIR")
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(os.path.dirname(repo), "shared", "reference", "remote-code")


def load_model(folder: str, patch_sigmoid: bool):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    arch = (cfg.get("architectures") or [""])[0]
    if "auto_map" not in cfg:
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM.from_pretrained(folder, attn_implementation="eager"), arch
    sys.path.insert(0, remote_code_dir())
    import make_tiny  # the shims; importing sets HF_HUB_OFFLINE and a private module cache

    if arch.startswith("Norbert"):
        cls = make_tiny.load_norbert3(folder)
    else:
        cls = make_tiny.load_gptbert(folder)
        if patch_sigmoid:
            mod = sys.modules[cls.__module__]
            src = open(mod.__file__).read()
            if "30 * torch.sigmoid(subword_prediction / 7.5)" not in src:
                pass  # already patched on disk
    model = cls.from_pretrained(folder)
    return model, arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--patch-sigmoid", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = json.load(open(args.input))
    ids = torch.tensor(spec["input_ids"], dtype=torch.long)
    mask = torch.tensor(spec["attention_mask"], dtype=torch.long)
    model, arch = load_model(args.model, args.patch_sigmoid)
    model.eval()

    captured = {}

    def grab_head_input(module, inputs, output):
        # A copy: NorBERT3's forward writes its -inf ids into the head output in place.
        live = output[0] if isinstance(output, tuple) else output
        captured["raw"] = live.detach().clone()
        # GPT-BERT with --patch-sigmoid builds its logits from the head output: keep it in the graph.
        captured["raw_live"] = live

    # The MLM head's raw output: hook the head module itself, so the model's own post-processing
    # (NorBERT3's -inf ids, GPT-BERT's sigmoid and shift) is not in it.
    head = None
    for name in ("classifier", "lm_head", "head", "cls"):
        if hasattr(model, name):
            head = getattr(model, name)
            break
    if arch.startswith("ModernBert"):
        # ModernBertForMaskedLM: head (dense+act+norm) then decoder; the raw output is the decoder's.
        head = model.decoder
    assert head is not None, f"no MLM head found on {type(model).__name__}"
    head.register_forward_hook(grab_head_input)

    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    raw = captured["raw"]
    if isinstance(raw, tuple):
        raw = raw[0]
    if arch.startswith("Norbert"):
        # NorBERT3's classifier returns time-major [L, B, V] in some versions: make it [B, L, V].
        if raw.shape[0] != ids.shape[0] and raw.shape[1] == ids.shape[0]:
            raw = raw.transpose(0, 1)
    logits = out.logits
    if arch.startswith("GptBert") and args.patch_sigmoid:
        # The seed's patch removes the squash: logits = [bos one-hot, raw[:, :-1]].
        bos = torch.zeros(raw.shape[0], 1, raw.shape[2], dtype=raw.dtype)
        bos[:, :, model.config.bos_token_id] = 1.0
        logits = torch.cat([bos, captured["raw_live"][:, :-1]], dim=1)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        hs = out.hidden_states
        hidden = hs[-1] if not isinstance(hs, torch.Tensor) else hs
    if arch.startswith("ModernBert"):
        # ModernBertForMaskedLM's last hidden state is after the final norm.
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    x = torch.log1p(torch.relu(logits))
    x = x.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
    splade = x.max(dim=1).values
    torch.manual_seed(int(spec.get("probe_seed", 0)))
    probe = torch.randn(splade.shape)
    (splade * probe).sum().backward()
    tensors = {
        "last_hidden_state": hidden.detach().float().contiguous(),
        "mlm_raw": raw.detach().float().contiguous(),
        "logits": logits.detach().float().contiguous(),
        "splade": splade.detach().float().contiguous(),
        "probe": probe.contiguous(),
    }
    for name, p in model.named_parameters():
        if p.grad is not None:
            tensors[f"grad.{name}"] = p.grad.detach().float().contiguous()
    save_file(tensors, args.out)


if __name__ == "__main__":
    main()
