"""Byte-level BPE: trainer, encoder/decoder, and a Hugging Face tokenizer.json writer.

Pre-tokenization is the GPT-2 regex (as Hugging Face ByteLevel with use_regex=true), bytes are mapped to
printable unicode characters with the GPT-2 table, merges are learned greedily on word frequencies with
incremental pair counting. Vocabulary: specials first (ids 0..), then the 256 bytes, then the merges.
"""
import heapq
import json
from collections import Counter, defaultdict

import regex

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
GPT2_PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
SPECIAL_SPLIT = regex.compile("(" + "|".join(regex.escape(s) for s in SPECIALS) + ")")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


B2U = bytes_to_unicode()
U2B = {v: k for k, v in B2U.items()}


def word_to_symbols(w):
    return "".join(B2U[b] for b in w.encode("utf-8"))


def pretokenize(text):
    return GPT2_PAT.findall(text)


def train(texts, vocab_size=4096, verbose=True):
    """texts: iterable of strings (special tokens are removed). Returns (vocab list, merges list)."""
    counts = Counter()
    for t in texts:
        for part in SPECIAL_SPLIT.split(t):
            if part in SPECIALS or not part:
                continue
            counts.update(pretokenize(part))
    base = [B2U[b] for b in range(256)]
    vocab = SPECIALS + base
    nmerges = vocab_size - len(vocab)
    words = []   # list of symbol lists
    freqs = []
    for w, c in counts.items():
        words.append(list(word_to_symbols(w)))
        freqs.append(c)
    pair_counts = defaultdict(int)
    where = defaultdict(set)
    for wi, syms in enumerate(words):
        f = freqs[wi]
        for a, b in zip(syms, syms[1:]):
            pair_counts[(a, b)] += f
            where[(a, b)].add(wi)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < nmerges and heap:
        negc, pair = heapq.heappop(heap)
        c = pair_counts.get(pair, 0)
        if c <= 0:
            continue
        if -negc != c:   # stale entry
            heapq.heappush(heap, (-c, pair))
            continue
        a, b = pair
        new = a + b
        merges.append(pair)
        vocab.append(new)
        changed = set()
        for wi in list(where[pair]):
            syms = words[wi]
            f = freqs[wi]
            # remove old pairs
            for p in zip(syms, syms[1:]):
                pair_counts[p] -= f
                changed.add(p)
            out = []
            i = 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            for p in zip(syms, syms[1:]):
                where[p].discard(wi)
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                where[p].add(wi)
                changed.add(p)
        pair_counts.pop(pair, None)
        where.pop(pair, None)
        for p in changed:
            cnt = pair_counts.get(p, 0)
            if cnt > 0:
                heapq.heappush(heap, (-cnt, p))
            else:
                pair_counts.pop(p, None)
        if verbose and len(merges) % 500 == 0:
            print(f"  merge {len(merges)}/{nmerges}: {new!r} ({c})", flush=True)
    return vocab, merges


class Tokenizer:
    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.ids = {s: i for i, s in enumerate(vocab)}
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.cache = {}
        self.special_ids = {s: self.ids[s] for s in SPECIALS}

    @classmethod
    def from_file(cls, path):
        j = json.load(open(path))
        m = j["model"]
        n = max(list(m["vocab"].values()) + [t["id"] for t in j["added_tokens"]]) + 1
        vocab = [None] * n
        for s, i in m["vocab"].items():
            vocab[i] = s
        for t in j["added_tokens"]:
            vocab[t["id"]] = t["content"]
        merges = [tuple(x.split(" ")) if isinstance(x, str) else tuple(x) for x in m["merges"]]
        return cls(vocab, merges)

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        syms = list(word_to_symbols(word))
        while len(syms) > 1:
            best, bi = None, -1
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            a, b = syms[bi], syms[bi + 1]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        ids = [self.ids[s] for s in syms]
        if len(self.cache) < 2_000_000:
            self.cache[word] = ids
        return ids

    def encode(self, text):
        out = []
        for part in SPECIAL_SPLIT.split(text):
            if not part:
                continue
            if part in self.special_ids:
                out.append(self.special_ids[part])
                continue
            for w in pretokenize(part):
                out.extend(self.bpe(w))
        return out

    def decode_bytes(self, ids):
        bs = bytearray()
        for i in ids:
            s = self.vocab[i]
            if s in self.special_ids:
                bs += s.encode("utf-8")
            else:
                bs += bytes(U2B[ch] for ch in s)
        return bytes(bs)

    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_hf_json(self, path, merges):
        added = [{"id": self.ids[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for s in SPECIALS]
        model_vocab = {s: i for i, s in enumerate(self.vocab)}  # specials too, so they keep ids 0..2
        j = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False,
                      "vocab": model_vocab, "merges": [a + " " + b for a, b in merges]},
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
