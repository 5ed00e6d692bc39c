"""Byte-level BPE in the Hugging Face `tokenizer.json` format (GPT-2 pre-tokenisation).

Written here because PyPI (and so the `tokenizers` wheel) is unreachable on the training machines; the
TypeScript service loads the saved file with a maintained library, and a test checks that both agree.
"""
import heapq
import json
from collections import Counter, defaultdict

import regex

EOS = "<|endoftext|>"
PRETOKENIZE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _bytes_to_unicode():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


BYTE_TO_UNICODE = _bytes_to_unicode()


def _symbols(word):
    return tuple(BYTE_TO_UNICODE[b] for b in word.encode("utf-8"))


def train(texts, vocab_size, min_frequency=2):
    word_counts = Counter()
    for text in texts:
        for part in text.split(EOS):
            word_counts.update(PRETOKENIZE.findall(part))
    words = [list(_symbols(w)) for w in word_counts]
    freqs = list(word_counts.values())

    vocab = {EOS: 0}
    for b in range(256):
        vocab[BYTE_TO_UNICODE[b]] = len(vocab)

    pair_counts = defaultdict(int)
    pair_words = defaultdict(set)
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freqs[i]
            pair_words[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue
        if -neg_count < min_frequency:
            break
        merged = pair[0] + pair[1]
        merges.append(pair)
        vocab[merged] = len(vocab)
        changed = set()
        for i in list(pair_words[pair]):
            symbols = words[i]
            for p in zip(symbols, symbols[1:]):
                pair_counts[p] -= freqs[i]
                changed.add(p)
            out = merge_pair(symbols, *pair)
            words[i] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += freqs[i]
                pair_words[p].add(i)
                changed.add(p)
        del pair_counts[pair]
        del pair_words[pair]
        for p in changed:
            if pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    return vocab, merges


def merge_pair(symbols, first, second):
    """`symbols` with every adjacent (first, second), left to right, joined into one symbol."""
    out, j = [], 0
    while j < len(symbols):
        if j + 1 < len(symbols) and symbols[j] == first and symbols[j + 1] == second:
            out.append(first + second)
            j += 2
        else:
            out.append(symbols[j])
            j += 1
    return out


def to_json(vocab, merges):
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": vocab[EOS], "content": EOS, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges],
        },
    }


class Tokenizer:
    def __init__(self, path):
        spec = json.loads(open(path, encoding="utf-8").read())
        self.vocab = spec["model"]["vocab"]
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(spec["model"]["merges"])}
        self.eos_id = self.vocab[EOS]
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.unicode_to_byte = {c: b for b, c in BYTE_TO_UNICODE.items()}
        self.cache = {}

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        symbols = list(_symbols(word))
        while len(symbols) > 1:
            ranked = [(self.ranks.get(p, float("inf")), k) for k, p in enumerate(zip(symbols, symbols[1:]))]
            rank, k = min(ranked)
            if rank == float("inf"):
                break
            symbols = merge_pair(symbols, symbols[k], symbols[k + 1])
        ids = [self.vocab[s] for s in symbols]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for n, part in enumerate(text.split(EOS)):
            if n > 0:
                ids.append(self.eos_id)
            for word in PRETOKENIZE.findall(part):
                ids.extend(self._bpe(word))
        return ids

    def decode(self, ids):
        data = bytes(self.unicode_to_byte[c] for i in ids if i != self.eos_id for c in self.id_to_token[i])
        return data.decode("utf-8", errors="replace")
