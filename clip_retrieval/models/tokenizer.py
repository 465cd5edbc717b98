"""The tokenizers of the ONNX text towers in plain Python and numpy (no torch).

``ClipTokenizer``: open_clip's CLIP byte-pair tokenizer, the same token ids as
``open_clip.tokenizer.SimpleTokenizer`` with its default ``lower`` cleaning and truncation
(a test compares them on the rules table), so the ONNX text tower can be fed without
importing open_clip (4 s) or torch. ``BertTokenizer``: Chinese-CLIP's WordPiece tokenizer,
cn_clip's own code run without importing the ``cn_clip.clip`` package (which imports torch).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np

ArrayLike = TypeVar("ArrayLike")    # a numpy array or a torch tensor: returned as given

SPECIAL = ("<start_of_text>", "<end_of_text>")


@lru_cache()
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """Texts to ``int64[N, context_length]`` token ids, padded with 0."""

    def __init__(self, vocab_path: str | Path, context_length: int = 77):
        import regex

        merges = gzip.open(vocab_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(_bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in SPECIAL}
        self.pattern = regex.compile("|".join(SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                     regex.IGNORECASE)
        self.sot, self.eot = self.encoder[SPECIAL[0]], self.encoder[SPECIAL[1]]
        self.context_length = context_length

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        byte_map = _bytes_to_unicode()
        ids: list[int] = []
        for token in self.pattern.findall(_clean(text)):
            token = "".join(byte_map[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(token).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot
            out[row, :len(ids)] = ids
        return out


class BertTokenizer:
    """Texts to ``int64[N, context_length]`` ids as ``cn_clip.clip.tokenize`` gives them: [CLS] text [SEP], 0-padded."""

    def __init__(self, vocab_path: str | Path, context_length: int = 52):
        self.tokenizer = _cn_clip_bert_module().FullTokenizer(vocab_file=str(vocab_path))
        self.cls, self.sep = self.tokenizer.vocab["[CLS]"], self.tokenizer.vocab["[SEP]"]
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text))[:self.context_length - 2]
            ids = [self.cls, *ids, self.sep]
            out[row, :len(ids)] = ids
        return out


@lru_cache()
def _cn_clip_bert_module():
    """cn_clip's ``bert_tokenizer`` module, loaded from its file (it needs only the standard library and six):
    ``import cn_clip.clip.bert_tokenizer`` would run ``cn_clip.clip/__init__``, which imports torch."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'cn_clip'", name="cn_clip")   # a dependency of clipsou itself
    path = Path(list(spec.submodule_search_locations)[0]) / "clip" / "bert_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("clip_retrieval_cn_clip_bert_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def trim_padding(tokens: ArrayLike, pad_id: int = 0) -> ArrayLike:
    """Drop trailing columns that are padding in every row (numpy or torch, on any device).

    A causal tower pooled at the end token gives the same vectors, and a 5-way expanded query
    costs a fraction of 5 x 77 tokens. The one trimming both the ONNX and the torch towers use.
    """
    used = (tokens != pad_id).any(0)
    used = np.flatnonzero(np.asarray(used.cpu() if hasattr(used, "cpu") else used))
    return tokens[:, :int(used.max()) + 1 if used.size else 1]
