"""Write the model card models/spikingbrain-tiny/README.md from the training log and export results."""
import argparse
import gzip
import json
import os
from collections import defaultdict

import bpe

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def data_stats(work, tok):
    p = os.path.join(work, "data_stats.json")
    if os.path.exists(p):
        return json.load(open(p))
    st = defaultdict(lambda: {"docs": 0, "chars": 0, "tokens": 0, "val_docs": 0})
    for l in gzip.open(os.path.join(work, "docs.jsonl.gz"), "rt", encoding="utf-8"):
        d = json.loads(l)
        s = st[d["kind"]]
        if d["split"] == "val":
            s["val_docs"] += 1
            continue
        s["docs"] += 1
        s["chars"] += len(d["text"])
        s["tokens"] += len(tok.encode(d["text"])) + (0 if d["kind"] == "chat" else 1)
    st = dict(st)
    json.dump(st, open(p, "w"), indent=1)
    return st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=os.path.join(HERE, "work"))
    ap.add_argument("--run", default=None)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "spikingbrain-tiny"))
    ap.add_argument("--hardware", default=None)
    args = ap.parse_args()
    run = args.run or os.path.join(args.work, "run")
    out = args.out
    tok = bpe.Tokenizer.from_file(os.path.join(args.work, "tokenizer.json"))
    loss = json.load(open(os.path.join(run, "loss.json")))
    ex = json.load(open(os.path.join(args.work, "export_stats.json")))
    ev = json.load(open(os.path.join(out, "eval.json")))
    ce = json.load(open(os.path.join(out, "chat-eval.json")))
    st = data_stats(args.work, tok)
    c = loss["config"]
    a = loss["args"]
    best = loss["best"]
    total_train = sum(v["tokens"] for v in st.values())
    epochs = best["tokens"] / total_train
    hw = args.hardware or ("one NVIDIA H200 GPU (bf16 autocast, float32 master weights), PyTorch "
                           + loss["torch"] if loss["device"] != "cpu" else "CPU, PyTorch " + loss["torch"])
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    names = {"bible": "King James Bible (bible-kjv-text), one document per chapter",
             "wordnet": "WordNet 3.0 synsets: `words (pos): gloss; \"examples\"`, 40 per document",
             "fortunes": "fortune cookies (fortunes, fortunes-min; 29 non-offensive files), 20 per document",
             "chat": "synthetic ChatML dictionary conversations from WordNet (1-3 questions each)"}
    rows = "\n".join(f"| {names[k]} | {v['docs']} | {v['chars']/1e6:.1f} MB | {v['tokens']/1e6:.2f} M | "
                     f"{v['val_docs']} |" for k, v in st.items())
    chat_rows = "\n".join(f"| {'yes' if r['pass'] else 'no'} | {r['word']} | {r['gloss']} | {r['answer']} |"
                          for r in ce["words"])
    tr_min = loss["train_seconds"] / 60
    card = f"""---
license: other
language: en
library_name: spikeserve
tags: [gla_swa, spikingbrain, hybrid-linear-attention, tiny]
---
# spikingbrain-tiny

The built-in default model of spikeserve: a {loss['params']/1e6:.1f}M-parameter SpikingBrain-style hybrid
(`model_type: gla_swa`, `GLAswaForCausalLM`), trained from scratch on open English text and synthetic
dictionary chats. It is a test and demo model: it continues King-James-style text and answers
"What does 'WORD' mean?" for common words, often wrongly. Do not use it for anything that matters.

## Architecture

Exactly the semantics of DESIGN.md section 2 (official SpikingBrain-7B tensor names, float32):

| | |
|---|---|
| layers | {c['num_hidden_layers']}: GLA on even indices, sliding-window attention on odd (`attn_layers` {c['attn_layers']}) |
| hidden / heads / kv heads / head dim | {c['hidden_size']} / {c['num_attention_heads']} / {c['num_key_value_heads']} / {c['hidden_size']//c['num_attention_heads']} |
| MLP | SwiGLU, intermediate {c['intermediate_size']} |
| GLA gate | low-rank `gk_proj` 256→16→64, `logsigmoid(·)/16`, `g_norm` over the head dim |
| sliding window | {c['sliding_window']} (a query attends keys p−{c['sliding_window']}…p, {c['sliding_window']+1} keys) |
| RoPE | rotate-half, θ = {c['rope_theta']:.0e} |
| RMSNorm eps | {c['norm_eps']} |
| vocabulary | {c['vocab_size']} (byte-level BPE), untied `lm_head` |
| parameters | {loss['params']:,} (`model.safetensors`: {size/1e6:.1f} MB float32) |

**Why this size.** It is the benchmark reference size of spikeserve (hidden 256, 8 layers, 8 heads, 2 kv heads,
window 256), so the default model exercises every engine path (GLA state, GQA, sliding window, RoPE) with the
real head layout, fits in under 40 MB as float32, runs fast on a CPU, and could be trained well in a few
minutes on one GPU. Training sequences (1024 tokens) are four times the window, so the window and the GLA state
both matter.

## Data and licenses

| source | train docs | text | train tokens | held-out docs |
|---|---|---|---|---|
{rows}

* King James Bible: public domain (text from the Debian package `bible-kjv-text`, extracted with `bible -f`).
* WordNet 3.0: © Princeton University, WordNet 3.0 license (permissive, BSD-like; keep the copyright notice,
  see `/usr/share/doc/wordnet-base/copyright`). The chats are derived from its glosses.
* fortunes: the fortune-mod collection as packaged by Debian (`fortunes`, `fortunes-min`), BSD license of
  fortune-mod (see `/usr/share/doc/fortunes/copyright`); the offensive set is not used.

Chats are rendered exactly as the official chat template renders them (default system prompt
"You are a helpful assistant.", `<|im_start|>role\\ncontent<|im_end|>\\n`) and end with `<|endoftext|>`;
plain documents end with `<|endoftext|>`. Held out for validation: 1% of the documents of each source
(chats as whole conversations). The answer to a question about a word is its WordNet first sense of the
part of speech with the most tagged senses, e.g. "Harbor (verb) means maintain (a theory, thoughts, or
feelings)."

## Tokenizer

Byte-level BPE trained by `tools/train/bpe.py` on a 4 MB sample of the training mix (GPT-2 pre-tokenizer
regex, {c['vocab_size'] - 256 - 3} merges), exactly {c['vocab_size']} tokens. Special tokens: `<|endoftext|>` = 0,
`<|im_start|>` = 1, `<|im_end|>` = 2; bytes 3–258; merges 259–4095. `tokenizer.json` is checked against the
Hugging Face `tokenizers` library (identical ids and lossless decode on 405 samples). `tokenizer_config.json`
carries the official SpikingBrain-7B chat template unchanged; `eos_token` is `<|im_end|>` so chat generation
stops there; `generation_config.json` has `eos_token_id` [2, 0] (`<|im_end|>`, `<|endoftext|>`).
No BOS token is added.

## Training

| | |
|---|---|
| hardware | {hw} |
| wall time | {tr_min:.1f} min of training ({loss['wall_seconds']:.0f} s for the whole script, data loading and evaluations included) |
| steps | {loss['steps']} of batch {a['batch']} × {a['seq']} tokens ({a['batch']*a['seq']:,} tokens/step) |
| tokens seen | {loss['tokens']/1e6:.1f} M in all; the exported checkpoint (best validation loss, step {best['step']}) had seen {best['tokens']/1e6:.1f} M ≈ {epochs:.1f} epochs of the {total_train/1e6:.2f} M-token training set |
| optimizer | AdamW (β 0.9/0.95, weight decay {a['wd']} on matrices), lr {a['lr']} with {a['warmup']} warm-up steps and cosine decay to {a['min_lr_frac']*a['lr']:.0e}, grad clip 1.0 |
| precision | bf16 autocast for the matrix products, GLA recurrence and norms in float32, float32 weights |
| GLA form | chunked (chunk 16: intra-chunk decay exp(b_i−b_j) masked to j≤i, recurrence over chunks; every exponent ≤ 0), unit-checked against a token-by-token float64 reference (`tools/train/test_model.py`) |
| seed | {a['seed']} |

Random 1024-token windows are drawn from the concatenated, shuffled training documents. A checkpoint was
evaluated and kept every minute; validation loss stopped improving after ~{epochs:.0f} epochs (the model then memorizes), the run went on to the
end of its time budget, and the checkpoint with the lowest validation loss is the one exported.

![loss](loss.png)

## Results

| | nats/token | bits/byte | unigram bits/byte |
|---|---|---|---|
| all validation (text + chats, 1024-token windows) | {ex['vall']:.3f} | | |
| validation plain text (Bible, WordNet, fortunes) | {ex['vt']:.3f} | {ex['vt_bpb']:.3f} | {ex['vt_uni']:.3f} |
| validation chats | {ex['vc']:.3f} | {ex['vc_bpb']:.3f} | {ex['vc_uni']:.3f} |
| `eval.json` slice ({ev['tokens_predicted']+1} held-out tokens, float64) | {ev['mean_nll']:.3f} | {ev['bits_per_byte']:.3f} | {ev['unigram_bits_per_byte']:.3f} |

The unigram baseline is the add-one-smoothed token frequency of the training set, over the same tokens.

**Chat.** Greedy answers to "What does 'WORD' mean?" (chat template, default system prompt) contain at
least half of the content words of the word's gloss for **{ce['passed']} of {ce['total']}** common words
(`chat-eval.json`; `good_words` there lists the ones that pass, with glosses and the greedy answers):

| pass | word | gloss | greedy answer |
|---|---|---|---|
{chat_rows}

**Text.** Greedy continuation of "And it came to pass" (40 tokens):
"{ex['cont'].replace(chr(10), ' / ')}". The longest prefix of it that occurs verbatim in the training corpus
is "{ex['verbatim'].replace(chr(10), ' / ')}"; the rest is King-James-style text that is not a verse.

## Files for the engine's tests

* `fixture.json`: 300 held-out tokens (longer than the window), float64 logits at positions
  {json.load(open(os.path.join(out, 'fixture.json')))['logits_positions']}, from the chunked PyTorch model, which equals the
  token-by-token float64 reference to {ex['err_ref']:.0e}; the float32 PyTorch model is within {ex['err_32']:.0e}
  (tolerance in the file: 1e-3).
* `eval.json`: {ev['tokens_predicted']+1} held-out plain-text tokens, their mean NLL ({ev['mean_nll']:.4f} nats/token, float64),
  bits per byte and the unigram baseline.
* `chat-eval.json`: the chat evaluation above.

## Reproduce

`tools/train/run.sh --device cuda --minutes 7.5` (data → tokenizer → training → export → fixture → this card);
see `tools/train/README.md`. Without a GPU, `tools/train/run.sh` trains on the CPU for the given minutes.
"""
    open(os.path.join(out, "README.md"), "w").write(card)
    print("wrote", os.path.join(out, "README.md"))


if __name__ == "__main__":
    main()
