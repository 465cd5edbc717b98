"""Cutting a query into words as jieba does, reading only the frequencies of the words in it.

Owns the segmentation algorithm: jieba 0.42's accurate mode with its HMM (the text's
dictionary words as a DAG, the most probable path by word frequency, jieba's HMM for runs
of characters no word covers), plus words the caller registers at jieba's user-word
frequency (the rules table's keys, aliases and connecting words) so they are never split.
It gives the cuts of ``jieba.Tokenizer()`` + ``add_word(w, 1_000_000)`` + ``lcut`` (tested
against jieba itself) without jieba's 0.56 s, 60 MB dictionary load: frequencies come from
``dictionary.Dictionary`` for just the substrings of the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

from .dictionary import Dictionary

USER_WORD_FREQ = 1_000_000
# jieba's own block patterns (jieba/__init__.py re_han_default, re_skip_default)
_HAN = re.compile(r"([\u4E00-\u9FD5a-zA-Z0-9+#&\._%\-]+)")
_SKIP = re.compile(r"(\r\n|\s)")


class Segmenter:
    """Segments text over ``words`` (frequencies) and the registered ``extra`` words."""

    def __init__(self, words: Dictionary, extra: Iterable[str] = ()):
        self.words = words
        self._extra: dict[str, int] = {}
        added = 0
        for word in extra:
            self._extra[word] = USER_WORD_FREQ
            added += USER_WORD_FREQ     # jieba's add_word counts every call, repeats included
        self._added = added
        self._extra_longest = max(map(len, self._extra), default=1)

    def cut(self, text: str) -> list[str]:
        """The words of ``text`` in order; joined they give ``text`` back."""
        out: list[str] = []
        for block in _HAN.split(text):
            if not block:
                continue
            if _HAN.match(block):
                out += self._cut_block(block)
                continue
            for piece in _SKIP.split(block):
                out += [piece] if _SKIP.match(piece) else list(piece)
        return out

    def _frequencies(self, block: str, longest: int) -> dict[str, int]:
        n = len(block)
        candidates = {block[k:i] for k in range(n) for i in range(k + 1, min(n, k + longest) + 1)}
        freqs = self.words.frequencies(candidates - self._extra.keys())
        freqs.update((w, f) for w, f in self._extra.items() if w in candidates)
        return freqs

    def _cut_block(self, block: str) -> Iterator[str]:
        longest = max(self.words.longest, self._extra_longest)
        freqs = self._frequencies(block, longest)
        n = len(block)
        log_total = math.log(max(1, self.words.total + self._added))
        route: list[tuple[float, int]] = [(0.0, 0)] * (n + 1)
        for start in range(n - 1, -1, -1):
            ends = [end for end in range(start, min(n, start + longest)) if freqs.get(block[start:end + 1])] or [start]
            route[start] = max((math.log(freqs.get(block[start:end + 1]) or 1) - log_total + route[end + 1][0], end)
                               for end in ends)
        x = 0
        run = ""
        while x < n:
            y = route[x][1] + 1
            if y - x == 1:
                run += block[x]
            else:
                yield from self._single_characters(run, freqs)
                run = ""
                yield block[x:y]
            x = y
        yield from self._single_characters(run, freqs)

    @staticmethod
    def _single_characters(run: str, freqs: dict[str, int]) -> Iterator[str]:
        """A run of one-character pieces: jieba's HMM groups it unless the run is itself a word."""
        if len(run) <= 1:
            yield from ([run] if run else [])
        elif freqs.get(run):
            yield from run
        else:
            from jieba import finalseg

            yield from finalseg.cut(run)
