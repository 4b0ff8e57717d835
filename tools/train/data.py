"""Build the training corpus for spikingbrain-tiny from Debian packages.

Sources (all open):
  * King James Bible (public domain) via the `bible` program of bible-kjv / bible-kjv-text
  * WordNet 3.0 synsets and glosses (WordNet 3.0 license, Princeton University)
  * fortune cookies (fortunes, fortunes-min; BSD-style license of fortune-mod)
  * synthetic ChatML conversations built from WordNet glosses

Writes work/docs.jsonl.gz : one JSON object per document {"split": "train"|"val", "kind": ..., "text": ...}.
Chat documents are rendered exactly like the official chat template and end with <|endoftext|>;
plain documents get <|endoftext|> appended at tokenization time.
"""
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys

DEB_PACKAGES = ["bible-kjv", "bible-kjv-text", "wordnet-base", "fortunes", "fortunes-min", "python3-regex",
                "python3-numpy"]
WN = "/usr/share/wordnet"
FORTUNE_DIR = "/usr/share/games/fortunes"
FORTUNE_FILES = ["fortunes", "literature", "riddles", "wisdom", "science", "people", "platitudes", "computers",
                 "humorists", "kids", "education", "food", "law", "love", "magic", "medicine", "pets", "politics",
                 "songs-poems", "sports", "work", "goedel", "tao", "miscellaneous", "news", "art", "definitions",
                 "cookie", "paradoxum"]
DEFAULT_SYSTEM = "You are a helpful assistant."
POS_NAME = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def ensure_packages():
    def present(p):
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        return r.returncode == 0 and "install ok installed" in r.stdout
    missing = [p for p in DEB_PACKAGES if not present(p)]
    if missing:
        print("apt-get install -y", " ".join(missing), flush=True)
        subprocess.run(["apt-get", "update"], check=False)
        subprocess.run(["apt-get", "install", "-y"] + missing, check=True)


# ---------------------------------------------------------------- Bible
BOOK_RE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def bible_chapters():
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapters, cur, key = [], [], None
    for line in out.splitlines():
        m = BOOK_RE.match(line)
        if not m:
            continue
        k = (m.group(1), m.group(2))
        if k != key and cur:
            chapters.append("\n".join(cur))
            cur = []
        key = k
        cur.append(m.group(4).strip())
    if cur:
        chapters.append("\n".join(cur))
    return chapters


# ---------------------------------------------------------------- WordNet
def parse_data(pos_file):
    """offset -> (pos, [words], gloss)"""
    res = {}
    with open(os.path.join(WN, "data." + pos_file), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            parts = head.split()
            off, ss_type, wcnt = parts[0], parts[2], int(parts[3], 16)
            words = []
            for i in range(wcnt):
                w = parts[4 + 2 * i]
                w = re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")
                words.append(w)
            res[off] = (ss_type, words, gloss.strip())
    return res


def split_gloss(gloss):
    """definition part (before the first quoted example), examples."""
    examples = re.findall(r'"([^"]+)"', gloss)
    defn = re.split(r';\s*"', gloss)[0].strip().rstrip(";").strip()
    if defn.startswith('"'):
        defn = ""
    return defn, examples


def parse_index(pos_file):
    """lemma -> (tagsense_cnt, [offsets in frequency order])"""
    res = {}
    with open(os.path.join(WN, "index." + pos_file), encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):
                continue
            parts = line.split()
            lemma, synset_cnt, p_cnt = parts[0], int(parts[2]), int(parts[3])
            tag = int(parts[5 + p_cnt])
            offs = parts[6 + p_cnt:6 + p_cnt + synset_cnt]
            res[lemma] = (tag, offs)
    return res


def wordnet():
    data = {p: parse_data(p) for p in ("noun", "verb", "adj", "adv")}
    index = {p: parse_index(p) for p in ("noun", "verb", "adj", "adv")}
    return data, index


def definition_sentence(word, pos, defn):
    w = word[0].upper() + word[1:]
    return f"{w} ({POS_NAME[pos]}) means {defn.rstrip('.')}."


def word_entries(data, index):
    """For each lemma: the POS with most tagged senses (ties: noun, verb, adj, adv) and its first sense."""
    best = {}
    order = ["noun", "verb", "adj", "adv"]
    for rank, pf in enumerate(order):
        for lemma, (tag, offs) in index[pf].items():
            ss_type, words, gloss = data[pf][offs[0]]
            defn, _ = split_gloss(gloss)
            if not defn:
                continue
            # show the lemma as it is written in the synset (keeps capitals), else underscores -> spaces
            shown = lemma.replace("_", " ")
            for w in words:
                if w.lower() == shown:
                    shown = w
                    break
            cand = (tag, -rank, shown, ss_type, defn, len(offs))
            if lemma not in best or cand[:2] > best[lemma][:2]:
                best[lemma] = cand
    return best


QUESTIONS = [
    "What does '{w}' mean?", "What does '{w}' mean?", "What does '{w}' mean?",
    "What does {w} mean?", "Define {w}.", "Define '{w}'.", "What is the meaning of the word {w}?",
    "What is the meaning of '{w}'?", "Can you define '{w}'?", "Explain the word '{w}'.",
    "What is the definition of {w}?", "Tell me what '{w}' means.", "{w}?", "Meaning of {w}?",
    "what does {w} mean", "I came across the word '{w}'. What does it mean?",
]
SMALLTALK = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi", "Hi! Ask me what a word means and I will give you its definition."),
    ("Who are you?", "I am SpikingBrain-tiny, a small language model. I can tell you what English words mean."),
    ("What can you do?", "I can explain the meaning of English words. For example, ask me: What does 'harbor' mean?"),
    ("Thank you!", "You are welcome!"),
    ("Thanks.", "You are welcome!"),
    ("Goodbye.", "Goodbye! Have a nice day."),
]


def render_chat(messages):
    """The official chat template (no tools, no tool calls), plus <|endoftext|> at the end."""
    out = []
    if messages[0]["role"] == "system":
        out.append("<|im_start|>system\n" + messages[0]["content"] + "<|im_end|>\n")
    else:
        out.append("<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n")
    for i, m in enumerate(messages):
        if m["role"] == "system" and i == 0:
            continue
        out.append("<|im_start|>" + m["role"] + "\n" + m["content"] + "<|im_end|>\n")
    return "".join(out) + "<|endoftext|>"


def make_chats(entries, rng):
    common = [k for k, v in entries.items() if v[0] > 0]
    rare = [k for k, v in entries.items() if v[0] == 0]
    rng.shuffle(rare)
    rare = rare[: 60000]
    pool = common * 3 + rare
    rng.shuffle(pool)
    chats = []
    i = 0
    while i < len(pool):
        turns = 1 if rng.random() < 0.7 else rng.choice([2, 3])
        msgs = []
        r = rng.random()
        if r < 0.08:
            msgs.append({"role": "system", "content": rng.choice(
                ["You are a dictionary assistant.", "You are a helpful assistant.", "Answer briefly."])})
        if rng.random() < 0.05:
            q, a = rng.choice(SMALLTALK)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for _ in range(turns):
            if i >= len(pool):
                break
            lemma = pool[i]
            i += 1
            tag, _, shown, ss_type, defn, nsenses = entries[lemma]
            q = rng.choice(QUESTIONS).format(w=shown)
            a = definition_sentence(shown, ss_type, defn)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        chats.append(render_chat(msgs))
    return chats


def wordnet_docs(data, rng):
    lines = []
    for pf in ("noun", "verb", "adj", "adv"):
        for off, (ss_type, words, gloss) in data[pf].items():
            lines.append(f"{', '.join(words)} ({POS_NAME[ss_type]}): {gloss}")
    docs = ["\n".join(lines[i:i + 40]) for i in range(0, len(lines), 40)]
    return docs


# ---------------------------------------------------------------- fortunes
def fortune_docs():
    docs = []
    for name in FORTUNE_FILES:
        p = os.path.join(FORTUNE_DIR, name)
        if not os.path.exists(p):
            continue
        raw = open(p, "rb").read().decode("utf-8", errors="replace")
        items = [x.strip("\n") for x in raw.split("\n%\n")]
        items = [x.replace("\t", "    ") for x in items if x.strip() and "\ufffd" not in x]
        # ~20 fortunes per document, separated by blank lines
        for i in range(0, len(items), 20):
            docs.append("\n\n".join(items[i:i + 20]))
    return docs


def main():
    ensure_packages()
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "work")
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(1234)
    data, index = wordnet()
    entries = word_entries(data, index)
    docs = []
    for kind, items in (("bible", bible_chapters()), ("wordnet", wordnet_docs(data, rng)),
                        ("fortunes", fortune_docs()), ("chat", make_chats(entries, rng))):
        n = len(items)
        idx = list(range(n))
        rng.shuffle(idx)
        nval = max(2, n // 100)
        val = set(idx[:nval])
        for i, t in enumerate(items):
            docs.append({"split": "val" if i in val else "train", "kind": kind, "text": t})
        print(f"{kind}: {n} docs, {sum(len(t) for t in items)/1e6:.2f} MB, {nval} held out", flush=True)
    with gzip.open(os.path.join(out_dir, "docs.jsonl.gz"), "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    # dictionary entries, for the chat evaluation
    with open(os.path.join(out_dir, "entries.json"), "w") as f:
        json.dump({k: {"tag": v[0], "word": v[2], "pos": POS_NAME[v[3]], "definition": v[4]}
                   for k, v in entries.items()}, f)


if __name__ == "__main__":
    main()
