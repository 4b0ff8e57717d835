"""Check work/tokenizer.json with the Hugging Face `tokenizers` npm package (node_modules of the repo):
same ids as bpe.py on held-out and training samples, and lossless decode."""
import gzip
import json
import os
import random
import subprocess
import sys

import bpe

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    work = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "work")
    tok = bpe.Tokenizer.from_file(os.path.join(work, "tokenizer.json"))
    assert len(tok.vocab) == 4096 and [tok.ids[s] for s in bpe.SPECIALS] == [0, 1, 2]
    docs = [json.loads(l) for l in gzip.open(os.path.join(work, "docs.jsonl.gz"), "rt", encoding="utf-8")]
    rng = random.Random(0)
    texts = [d["text"] for d in rng.sample(docs, 400)]
    texts += ["Hello  world!\n\n  tabs\tand 123456 numbers, émigré café 日本語 🙂 it's we'll",
              "<|im_start|>user\nWhat does 'harbor' mean?<|im_end|>\n<|im_start|>assistant\n",
              "   leading spaces", "trailing   ", ""]
    path = os.path.join(work, "tokenizer_samples.json")
    json.dump([{"text": t, "ids": tok.encode(t)} for t in texts], open(path, "w"))
    r = subprocess.run(["node", os.path.join(HERE, "check_tokenizer.cjs"), os.path.join(work, "tokenizer.json"), path])
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
