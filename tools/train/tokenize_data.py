"""Train the byte-level BPE tokenizer on a ~4 MB sample and tokenize the corpus into uint16 .npy files.

work/tokenizer.json           Hugging Face tokenizer
work/train.npy, work/val.npy  token streams (documents shuffled, each ends with <|endoftext|>)
work/val_text.npy             held-out plain text only (Bible, WordNet, fortunes)
work/val_chat.npy             held-out chats only
work/unigram.npy              token counts of the training stream (for the unigram baseline)
"""
import gzip
import json
import os
import random
import sys
import time

import numpy as np

import bpe

VOCAB_SIZE = 4096


def main():
    work = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "work")
    docs = [json.loads(l) for l in gzip.open(os.path.join(work, "docs.jsonl.gz"), "rt", encoding="utf-8")]
    rng = random.Random(4321)
    train_docs = [d for d in docs if d["split"] == "train"]
    # ~4 MB sample for the tokenizer, mixing all kinds proportionally
    sample, size = [], 0
    order = list(range(len(train_docs)))
    rng.shuffle(order)
    for i in order:
        t = train_docs[i]["text"]
        sample.append(t)
        size += len(t)
        if size > 4_000_000:
            break
    t0 = time.time()
    vocab, merges = bpe.train(sample, VOCAB_SIZE)
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    print(f"BPE trained on {size/1e6:.1f} MB in {time.time()-t0:.0f}s", flush=True)
    tok = bpe.Tokenizer(vocab, merges)
    tok.to_hf_json(os.path.join(work, "tokenizer.json"), merges)

    t0 = time.time()
    eot = tok.special_ids["<|endoftext|>"]

    def enc(d):
        ids = tok.encode(d["text"])
        if d["kind"] != "chat":
            ids.append(eot)
        return ids

    streams = {"train": [], "val": [], "val_text": [], "val_chat": []}
    rng.shuffle(docs)
    nbytes = {"val_text": 0, "val_chat": 0}
    for d in docs:
        ids = enc(d)
        streams[d["split"]].extend(ids)
        if d["split"] == "val":
            k = "val_chat" if d["kind"] == "chat" else "val_text"
            streams[k].extend(ids)
    for k, v in streams.items():
        a = np.array(v, dtype=np.uint16)
        np.save(os.path.join(work, k + ".npy"), a)
        print(f"{k}: {len(a)} tokens", flush=True)
    counts = np.bincount(np.array(streams["train"], dtype=np.int64), minlength=VOCAB_SIZE)
    np.save(os.path.join(work, "unigram.npy"), counts)
    print(f"tokenized in {time.time()-t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
