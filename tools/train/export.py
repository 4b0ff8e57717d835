"""Export the trained checkpoint to Hugging Face layout in models/spikingbrain-tiny/ and evaluate it.

Writes config.json, model.safetensors (float32), tokenizer.json, tokenizer_config.json, special_tokens_map.json,
generation_config.json, fixture.json (float64 logits), eval.json (held-out slice, mean NLL, bits per byte),
chat-eval.json, loss.png and README.md (model card).
"""
import argparse
import json
import math
import os
import re
import shutil
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import bpe
from model import Config, GLAswaForCausalLM, reference_logits
from train import load_pieces

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
SPEC = os.path.join(ROOT, "test", "fixtures", "spikingbrain-7b", "tokenizer_config.json")

CHAT_WORDS = ["harbor", "bread", "river", "mountain", "candle", "horse", "winter", "garden", "king", "bridge",
              "doctor", "island", "library", "knife", "thunder", "apple", "teacher", "ocean", "lamp", "wheat",
              "desert", "butter", "sword", "window", "forest"]
STOP = set("""a an the of or and to in on at by for with from as is are be been being that which who whom whose
this these those it its into out up down over under about any some such than then very more most other another
one two usually especially often something someone person thing things used use using made make having has have
who what where when how not no can may being etc e g also his her their them they he she you your our we""".split())


# ------------------------------------------------------------------ files
def write_safetensors(path, sd):
    header, offset, blobs = {}, 0, []
    for k in sorted(sd):
        a = sd[k].detach().to(torch.float32).contiguous().numpy()
        b = a.astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(data[s:e], dtype="<f4").reshape(v["shape"]).copy())
    return out


def hf_config(cfg: Config, max_pos):
    return {
        "architectures": ["GLAswaForCausalLM"],
        "model_type": "gla_swa",
        "attention_dropout": 0.0,
        "attn_layers": cfg.attn_layers,
        "attn_mode": "chunk",
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "conv_size": 4,
        "elementwise_affine": True,
        "hidden_act": "swish",
        "hidden_size": cfg.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": max_pos,
        "norm_eps": cfg.norm_eps,
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "rope_theta": cfg.rope_theta,
        "sliding_window": cfg.sliding_window,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.45.0",
        "use_cache": True,
        "use_short_conv": False,
        "vocab_size": cfg.vocab_size,
    }


def tokenizer_files(out, tok):
    spec = json.load(open(SPEC))
    added = {}
    for s in bpe.SPECIALS:
        added[str(tok.ids[s])] = {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": True}
    tc = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": spec["chat_template"],
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 1048576,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    json.dump(tc, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2, ensure_ascii=False)
    stm = {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
           "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False},
           "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False}}
    json.dump(stm, open(os.path.join(out, "special_tokens_map.json"), "w"), indent=2)
    gc = {"bos_token_id": 0, "eos_token_id": [tok.ids["<|im_end|>"], tok.ids["<|endoftext|>"]],
          "pad_token_id": 0, "do_sample": False, "transformers_version": "4.45.0"}
    json.dump(gc, open(os.path.join(out, "generation_config.json"), "w"), indent=2)


# ------------------------------------------------------------------ evaluation helpers
def render_prompt(user):
    return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + user +
            "<|im_end|>\n<|im_start|>assistant\n")


@torch.no_grad()
def greedy(model, ids, max_new, stop_ids):
    ids = list(ids)
    new = []
    for _ in range(max_new):
        logits = model(torch.tensor([ids]))[0, -1]
        nxt = int(logits.argmax())
        if nxt in stop_ids:
            break
        ids.append(nxt)
        new.append(nxt)
    return new


def content_words(text):
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3 and w not in STOP]


@torch.no_grad()
def window_nll(model, stream, T=1024):
    """mean NLL over non-overlapping windows of T+1 tokens (as in training validation)."""
    s = torch.from_numpy(stream.astype(np.int64))
    n = (len(s) - 1) // T
    tot, cnt = 0.0, 0
    for i in range(0, n, 8):
        idx = torch.arange(i, min(n, i + 8))
        x = s[idx[:, None] * T + torch.arange(T + 1)]
        lg = model(x[:, :-1])
        tot += F.cross_entropy(lg.double().reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        cnt += x[:, 1:].numel()
    return tot / cnt


def plot(loss, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tr = loss["train"]
    va = loss["val"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot([p["tokens"] / 1e6 for p in tr], [p["loss"] for p in tr], lw=0.8, alpha=0.7, label="train (batch)")
    ax.plot([p["tokens"] / 1e6 for p in va], [p["loss"] for p in va], "o-", color="C3", label="validation")
    b = loss.get("best")
    if b:
        ax.axvline(b["tokens"] / 1e6, color="gray", ls="--", lw=0.8, label="exported checkpoint")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_ylim(0.5, 5)
    ax.set_title("spikingbrain-tiny (9.7M params, gla_swa)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.path.join(HERE, "work"))
    ap.add_argument("--run", default=None, help="folder with ckpt_*.pt and loss.json (default work/run)")
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "spikingbrain-tiny"))
    ap.add_argument("--hardware", default=None, help="text for the model card")
    args = ap.parse_args()
    run = args.run or os.path.join(args.work, "run")
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    loss = json.load(open(os.path.join(run, "loss.json")))
    cfg = Config(**loss["config"])
    sd = load_pieces(run)
    model = GLAswaForCausalLM(cfg)
    model.load_state_dict(sd)
    model.eval()
    out = args.out
    tok = bpe.Tokenizer.from_file(os.path.join(args.work, "tokenizer.json"))

    # ---- files
    write_safetensors(os.path.join(out, "model.safetensors"), model.state_dict())
    back = read_safetensors(os.path.join(out, "model.safetensors"))
    assert set(back) == set(model.state_dict()) and all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    json.dump(hf_config(cfg, 1048576), open(os.path.join(out, "config.json"), "w"), indent=2)
    shutil.copy(os.path.join(args.work, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    tokenizer_files(out, tok)
    print("wrote HF files", flush=True)

    m64 = GLAswaForCausalLM(cfg).double()
    m64.load_state_dict({k: v.double() for k, v in back.items()})
    m64.eval()
    m32 = model

    # ---- fixture: ~300 held-out tokens, float64 logits; checked against the token-by-token reference
    val_text = np.load(os.path.join(args.work, "val_text.npy"))
    eot = tok.ids["<|endoftext|>"]
    starts = [0] + [i + 1 for i in np.nonzero(val_text == eot)[0][:-1]]
    fx_start = starts[1]
    fx = val_text[fx_start:fx_start + 300].astype(np.int64)
    t0 = time.time()
    with torch.no_grad():
        l64 = m64(torch.from_numpy(fx)[None])[0]
        ref = reference_logits(m64, torch.from_numpy(fx))
        l32 = m32(torch.from_numpy(fx)[None])[0].double()
    err_ref = (l64 - ref).abs().max().item()
    err_32 = (l64 - l32).abs().max().item()
    print(f"fixture: chunked f64 vs token-by-token f64 {err_ref:.2e}; f32 vs f64 {err_32:.2e} "
          f"({time.time()-t0:.0f}s)", flush=True)
    assert err_ref < 1e-9 and err_32 < 1e-3
    W = cfg.sliding_window
    positions = [0, 1, W - 1, W, W + 1, W + 40, 299]
    json.dump({"description": "float64 logits of spikingbrain-tiny (torch, chunked GLA; equals the "
                              "token-by-token reference to %.1e) for token_ids, at logits_positions" % err_ref,
               "token_ids": fx.tolist(), "logits_positions": positions,
               "logits": [[float("%.6g" % x) for x in l64[p].tolist()] for p in positions],
               "tolerance": 1e-3,
               "text": tok.decode(fx.tolist())},
              open(os.path.join(out, "fixture.json"), "w"))

    # ---- eval slice: ~2000 held-out plain-text tokens
    counts = np.load(os.path.join(args.work, "unigram.npy")).astype(np.float64) + 1.0
    logp_uni = np.log(counts / counts.sum())
    ev_start = next(s for s in starts if s > fx_start + 300 and s + 2000 <= len(val_text))
    ev = val_text[ev_start:ev_start + 2000].astype(np.int64)
    with torch.no_grad():
        lg = m64(torch.from_numpy(ev)[None])[0]
    nll = F.cross_entropy(lg[:-1], torch.from_numpy(ev[1:]), reduction="none")
    mean_nll = nll.mean().item()
    nbytes = len(tok.decode_bytes(ev[1:].tolist()))
    uni_bits = -logp_uni[ev[1:]].sum() / math.log(2)
    ev_json = {
        "description": "held-out plain text (not trained on). mean_nll: mean cross-entropy in nats/token of "
                       "token_ids[1:] given the previous tokens (the model starts from an empty state at "
                       "token_ids[0]), float64. bytes: UTF-8 bytes of decode(token_ids[1:]). unigram: "
                       "add-one-smoothed token frequencies of the training stream.",
        "token_ids": ev.tolist(), "mean_nll": mean_nll, "bits_per_byte": nll.sum().item() / math.log(2) / nbytes,
        "unigram_bits_per_byte": uni_bits / nbytes, "unigram_mean_nll": -logp_uni[ev[1:]].mean(),
        "bytes": nbytes, "tokens_predicted": len(ev) - 1,
    }
    json.dump(ev_json, open(os.path.join(out, "eval.json"), "w"))
    print(f"eval slice: nll {mean_nll:.4f} bpb {ev_json['bits_per_byte']:.3f} unigram bpb "
          f"{ev_json['unigram_bits_per_byte']:.3f}", flush=True)

    # ---- whole validation sets (float32, windows of 1024 like training)
    vt = window_nll(m32, val_text)
    vc_stream = np.load(os.path.join(args.work, "val_chat.npy"))
    vc = window_nll(m32, vc_stream)
    vall = window_nll(m32, np.load(os.path.join(args.work, "val.npy")))

    def bpb_stream(stream, nll_tok):
        n = ((len(stream) - 1) // 1024) * 1024
        s = stream[1:n + 1].tolist()
        b = len(tok.decode_bytes(s))
        return nll_tok * n / math.log(2) / b, -logp_uni[np.array(s)].sum() / math.log(2) / b
    vt_bpb, vt_uni = bpb_stream(val_text, vt)
    vc_bpb, vc_uni = bpb_stream(vc_stream, vc)
    print(f"val all {vall:.4f}; val text {vt:.4f} ({vt_bpb:.3f} bpb, unigram {vt_uni:.3f}); "
          f"val chat {vc:.4f} ({vc_bpb:.3f} bpb, unigram {vc_uni:.3f})", flush=True)

    # ---- greedy continuation of "And it came to pass"
    prompt = "And it came to pass"
    cont_ids = greedy(m32, tok.encode(prompt), 40, {eot})
    cont = tok.decode(cont_ids)
    import gzip
    train_text = []
    for l in gzip.open(os.path.join(args.work, "docs.jsonl.gz"), "rt", encoding="utf-8"):
        d = json.loads(l)
        if d["split"] == "train" and d["kind"] == "bible":
            train_text.append(d["text"])
    corpus = "\n".join(train_text)
    full = prompt + cont
    cuts = [m.start() for m in re.finditer(r"[ \n]", full)] + [len(full)]
    verbatim = max([c for c in cuts if full[:c] in corpus] or [0])
    verbatim_text = full[:verbatim]
    print(f"continuation: {full!r}; longest verbatim prefix in the training corpus: {verbatim_text!r}",
          flush=True)

    # ---- chat evaluation
    entries = json.load(open(os.path.join(args.work, "entries.json")))
    im_end = tok.ids["<|im_end|>"]
    results = []
    for w in CHAT_WORDS:
        e = entries[w]
        ans = tok.decode(greedy(m32, tok.encode(render_prompt(f"What does '{w}' mean?")), 60, {im_end, eot}))
        cw = sorted(set(content_words(e["definition"])))
        hit = [x for x in cw if x in set(content_words(ans))]
        ok = len(cw) > 0 and len(hit) * 2 >= len(cw)
        results.append({"word": w, "pos": e["pos"], "gloss": e["definition"], "answer": ans,
                        "gloss_content_words": cw, "matched": hit, "pass": ok})
        print(f"  {'PASS' if ok else 'fail'} {w}: {ans}", flush=True)
    npass = sum(r["pass"] for r in results)
    json.dump({"description": "Greedy answers to the chat prompt \"What does 'WORD' mean?\" (official chat "
                              "template, default system prompt). pass: at least half of the gloss's content "
                              "words appear in the answer.", "passed": npass, "total": len(results),
               "good_words": [{"word": r["word"], "pos": r["pos"], "gloss": r["gloss"],
                               "greedy_answer": r["answer"]} for r in results if r["pass"]],
               "words": results}, open(os.path.join(out, "chat-eval.json"), "w"), indent=1)
    print(f"chat eval: {npass}/{len(results)}", flush=True)

    # ---- plot + card
    plot(loss, os.path.join(out, "loss.png"))
    stats = dict(mean_nll=mean_nll, ev=ev_json, vt=vt, vc=vc, vall=vall, vt_bpb=vt_bpb, vt_uni=vt_uni,
                 vc_bpb=vc_bpb, vc_uni=vc_uni, err_ref=err_ref, err_32=err_32, cont=prompt + cont,
                 verbatim=verbatim_text, npass=npass, nchat=len(results), results=results)
    json.dump({k: v for k, v in stats.items() if k not in ("results", "ev")},
              open(os.path.join(args.work, "export_stats.json"), "w"), indent=1)
    print("done", flush=True)


if __name__ == "__main__":
    main()
