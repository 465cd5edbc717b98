"""Rendering a query through a rules table: segmented, classified, and phrased wholly in each language.

Owns what a query turns into (``Phrase``, ``Expansion`` and its display), the pieces a query is
cut into (table terms, connecting and function words, whole dictionary words, literal English),
and their renderings: every matched term in the query's order in the same language, place
phrases last, dictionary scene words placed as scenes, at most ``MAX_RENDERINGS`` per language.
It reads a table only through ``TermTable`` (``rules.RuleTable`` is one) and must not load or
validate rules files, encode text or search.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .normalisation import _CJK, _LATIN, LANGUAGES, normalize_query, script_of

if TYPE_CHECKING:
    from .dictionary import Dictionary

log = logging.getLogger(__name__)

MAX_VARIANTS = 24
MAX_RENDERINGS = 4          # whole-language phrasings per language, so a long query stays cheap to encode
DICTIONARY_WEIGHT = 0.5     # a dictionary rendering counts half a reviewed rule in the pooled vector
SOURCES = ("query", "normalisation", "rule", "dictionary")
# an English rendering that starts with one of these follows the thing it places ("dog on the grass")
PREPOSITIONS = ("on ", "in ", "at ", "by ", "under ", "near ", "inside ", "beside ", "behind ", "in front of ")
LOCALISERS = "上里中内边"    # a place word ending in one already holds the connector's place sense
# Words that carry the grammar of a request, not its content (issue 22 item 11): particles,
# question forms and measure words. Read as connectors that English drops, unless the table
# lists them itself; "有没有兔子" asks for a rabbit, it is not "have haven't rabbit".
FUNCTION_WORDS = ("吗", "呢", "吧", "啊", "呀", "嘛", "哦", "有", "有没有", "有无", "是", "是不是", "是否", "哪里",
                  "哪儿", "在哪", "在哪里", "在哪儿", "什么", "哪些", "哪个", "请", "找", "帮我找", "一些", "些",
                  "几只", "两只", "一群", "群", "匹", "双", "棵", "朵", "座", "位", "能", "可以", "一下", "看看")
MAX_COMPOUND = 6            # longest dictionary word looked for across segments (寻回犬, 金毛寻回犬)
SCENE_TAGS = ("s", "ns", "f", "t")    # jieba's place, place name, direction and time tags
TIME_SENSES = ("night", "midnight", "evening", "morning", "dawn", "dusk", "noon", "afternoon", "daytime", "nighttime")
_ADJECTIVE = re.compile(r"(al|ic|ous|ern|ful|ive|ish|ary)$")
_ARTICLE = re.compile(r"^(a|an|the) ")
_A_BEFORE_VOWEL = re.compile(r"\ba (?=[aeiou])")


@dataclass(frozen=True)
class Phrase:
    """One phrasing to encode: the text, its language and its weight in the pooled vector."""

    text: str
    lang: str
    weight: float = 1.0
    term: str = ""          # the rule key that produced it ("" for the original query)
    source: str = "rule"    # query, normalisation, rule or dictionary (see SOURCES)


@dataclass
class Rule:
    key: str
    aliases: list[str]
    expansions: list[Phrase]
    line: int


@dataclass
class Connector:
    """Connecting words (上的, 里, 在 ...) and how English renders them (see the rules file header)."""

    words: list[str]
    en: str          # "on the {}" wraps the word before it; "" drops the word; else the word itself
    line: int


class TermTable(Protocol):
    """What rendering reads from a rules table (``rules.RuleTable``)."""

    templates: dict[str, list[str]]
    original_weight: float

    @property
    def connecting(self) -> dict[str, Connector]: ...

    def lookup(self, term: str) -> Rule | None: ...

    def mentions_a_term(self, text: str) -> bool: ...

    def segment(self, text: str) -> list[str]: ...


@dataclass
class Expansion:
    """What a query turned into; ``phrases[0]`` is always the original query.

    ``languages`` are the ones the encoder reads: only phrasings in them are pooled, unless
    there are none (then the query alone is, and ``notice`` says why). ``None`` pools every
    phrasing (the query as typed, or the substitution stage of the benchmark).
    """

    query: str
    phrases: list[Phrase]
    matched: list[str] = field(default_factory=list)
    normalized: str = ""
    languages: frozenset[str] | None = None
    untranslated: list[str] = field(default_factory=list)

    @property
    def expansions(self) -> list[Phrase]:
        return self.phrases[1:]

    @property
    def pooled_expansions(self) -> list[Phrase]:
        """What was pooled besides the query itself: the flat ``expansions`` list of ``--json`` (issue 22
        item 15: a Traditional query's Simplified text is listed only when the model pooled it)."""
        return [p for p in self.pooled if p is not self.phrases[0]]

    @property
    def pooled(self) -> list[Phrase]:
        """The phrasings that go into the query vector: those in a language the encoder reads."""
        if self.languages is None:
            return self.phrases
        readable = [p for p in self.phrases if p.lang in self.languages]
        return readable or self.phrases[:1]

    @property
    def notice(self) -> str | None:
        """One line (Chinese and English) when a Chinese query reaches a model that does not read Chinese
        with words left untranslated; None when there is nothing to say."""
        if self.languages is None or "zh" in self.languages or not self.untranslated:
            return None
        words = "、".join(self.untranslated)
        words_en = ", ".join(self.untranslated)
        fix_zh = "请在 rules/expansions.yaml 加一条规则，或换用能读中文的模型（见 clipsou models）"
        fix_en = "add a rule to rules/expansions.yaml, or pick a Chinese-capable model (see clipsou models)"
        if not any(p.lang in self.languages for p in self.phrases):
            return (f"模型不读中文，这些词没有译法：{words}；按原文检索，结果不可靠。{fix_zh} / "
                    f"this model does not read Chinese and these words have no translation: {words_en}; "
                    f"searched as typed, results are unreliable: {fix_en}")
        return (f"模型不读中文，这些词没有译法、未参与检索：{words}。{fix_zh} / this model does not read Chinese; "
                f"these words have no translation and were left out: {words_en}: {fix_en}")

    def grouped(self) -> dict[str, list[dict]]:
        """Phrasings by language, each with its source, weight and whether it was pooled (for display and --json)."""
        pooled = {id(p) for p in self.pooled}
        out: dict[str, list[dict]] = {}
        for p in self.phrases:
            out.setdefault(p.lang, []).append({"text": p.text, "source": p.source, "weight": p.weight,
                                               "pooled": id(p) in pooled})
        return out


def format_grouped(groups: dict[str, list[dict]]) -> list[str]:
    """Readable lines, one per language and source: ``en (rule / 规则): a | b``; unpooled ones marked."""
    names = {"query": "query / 查询", "normalisation": "normalised / 规范化", "rule": "rule / 规则",
             "dictionary": "dictionary / 词典（未审核 unreviewed）"}
    lines = []
    for lang, items in groups.items():
        by_source: dict[tuple[str, bool], list[str]] = {}
        for item in items:
            by_source.setdefault((item["source"], item["pooled"]), []).append(item["text"])
        for (source, pooled), texts in by_source.items():
            note = "" if pooled else "  (模型不读，未使用 / not read by the model, not used)"
            lines.append(f"{lang} {names.get(source, source)}: " + " | ".join(texts) + note)
    return lines


@dataclass
class _Piece:
    """One segment of a normalised query, classified."""

    text: str
    kind: str                       # rule, dictionary, connector, literal, untranslated, other
    rule: Rule | None = None
    connector: Connector | None = None
    senses: list[str] = field(default_factory=list)


def substitute(table: TermTable, query: str, languages: frozenset[str] | set[str] = frozenset(LANGUAGES)) -> Expansion:
    """The first release's expansion, kept as the benchmark's ``substitution`` stage.

    Each matched word's variants take its place one at a time, leaving the rest of the
    query in Chinese ("草地上的golden retriever"); everything is pooled, the query included.
    """
    query = query.strip()
    phrases = [Phrase(query, script_of(query), table.original_weight, source="query")]
    matched: list[str] = []
    whole = table.lookup(query)
    if whole is not None:
        matched.append(whole.key)
        phrases.append(Phrase(whole.key, "zh", table.original_weight, whole.key))
        phrases += whole.expansions
    else:
        canonical = query
        # a query naming no term has nothing to segment for
        words = table.segment(query) if table.mentions_a_term(query) else []
        for word in words:
            rule = table.lookup(word)
            if rule is None or rule.key in matched:
                continue
            matched.append(rule.key)
            canonical = canonical.replace(word, rule.key)
            for phrase in [Phrase(rule.key, "zh", table.original_weight, rule.key), *rule.expansions]:
                phrases.append(Phrase(query.replace(word, phrase.text), phrase.lang, phrase.weight, rule.key))
        phrases.insert(1, Phrase(canonical, "zh", table.original_weight))
    return Expansion(query=query, phrases=_distinct(phrases, languages), matched=matched, normalized=query)


def pieces_of(table: TermTable, text: str, dictionary: Dictionary | None) -> list[_Piece]:
    """Segment and classify: rule terms, connecting words, dictionary words, literal English, the rest."""
    whole = table.lookup(text)
    if whole is not None:
        return [_Piece(text, "rule", rule=whole)]
    pieces: list[_Piece] = []
    for word in table.segment(text):
        if not word.strip() or not (_CJK.search(word) or _LATIN.search(word)):
            pieces.append(_Piece(word, "other"))
        elif (rule := table.lookup(word)) is not None:
            pieces.append(_Piece(word, "rule", rule=rule))
        elif word in table.connecting:
            pieces.append(_Piece(word, "connector", connector=table.connecting[word]))
        elif not _CJK.search(word):
            pieces.append(_Piece(word, "literal"))
        else:
            pieces += _dictionary_pieces(table, word, dictionary)
    return _whole_words(pieces, dictionary)


def _dictionary_pieces(table: TermTable, word: str, dictionary: Dictionary | None) -> list[_Piece]:
    """A word no rule covers: the dictionary's senses for it, or for its longest known parts."""
    if dictionary is None:
        return [_Piece(word, "untranslated")]
    if senses := dictionary.senses(word):
        return [_Piece(word, "dictionary", senses=senses)]
    out: list[_Piece] = []
    start = 0
    while start < len(word):
        for end in range(min(len(word), start + 4), start, -1):
            part = word[start:end]
            if part in table.connecting:
                out.append(_Piece(part, "connector", connector=table.connecting[part]))
                break
            if (rule := table.lookup(part)) is not None:
                out.append(_Piece(part, "rule", rule=rule))
                break
            if senses := dictionary.senses(part):
                out.append(_Piece(part, "dictionary", senses=senses))
                break
        else:
            end = start + 1
            out.append(_Piece(word[start], "untranslated"))
        start = end
    return out


def expand(table: TermTable, query: str, languages: frozenset[str] | set[str] = frozenset(LANGUAGES),
           dictionary: Dictionary | None = None) -> Expansion:
    """The query, its normalised form, and whole-language renderings in each language the encoder reads.

    Every matched term is rendered in the same language, in the query's order ("草地上的金毛" ->
    "golden retriever on the grass", never "草地上的golden retriever"); at most
    ``MAX_RENDERINGS`` per language. Words no rule covers go to ``dictionary`` when one is given.
    """
    query = query.strip()
    languages = frozenset(languages)
    normalized = normalize_query(query)
    phrases = [Phrase(query, script_of(query), table.original_weight, source="query")]
    if normalized != query:
        phrases.append(Phrase(normalized, script_of(normalized), table.original_weight, source="normalisation"))
    pieces = pieces_of(table, normalized, dictionary)
    matched = list(dict.fromkeys(p.rule.key for p in pieces if p.rule is not None))
    if "zh" in languages:
        phrases += render_zh(table, pieces, languages)
    if "en" in languages:
        phrases += render_en(table, pieces, dictionary)
    untranslated = []
    if "zh" not in languages:
        untranslated = list(dict.fromkeys(
            p.text for p in pieces if p.kind == "untranslated"
            or (p.kind == "rule" and not any(x.lang == "en" for x in p.rule.expansions))))
    return Expansion(query=query, phrases=_distinct(phrases, None), matched=matched, normalized=normalized,
                     languages=languages, untranslated=untranslated)


def render_zh(table: TermTable, pieces: list[_Piece], languages: frozenset[str]) -> list[Phrase]:
    """The query with each term's Chinese phrasings in its place (the key first: what captions use)."""
    rules = [p for p in pieces if p.rule is not None]
    if not rules:
        return []
    choices = {id(p): [Phrase(p.rule.key, "zh", table.original_weight, p.rule.key)] +
               [x for x in p.rule.expansions if x.lang == "zh"] for p in rules}
    out = []
    for i in range(min(MAX_RENDERINGS, max(len(c) for c in choices.values()))):
        parts, weight = [], table.original_weight
        for p in pieces:
            if p.rule is not None:
                pick = choices[id(p)][i % len(choices[id(p)])]
                parts.append(pick.text)
                weight = min(weight, pick.weight)
            elif p.kind == "literal" and "en" not in languages:
                continue      # no Latin words in a phrasing for a model that reads Chinese only
            elif p.kind == "connector" and parts and parts[-1][-1:] in LOCALISERS and p.text[0] in LOCALISERS:
                parts.append(p.text[1:])     # 雪中 + 里的 -> 雪中的, not 雪中里的
            else:
                parts.append(p.text)
        text = " ".join("".join(parts).split())
        if text:
            out.append(Phrase(text, "zh", weight, "+".join(r.rule.key for r in rules), "rule"))
    return out


def render_en(table: TermTable, pieces: list[_Piece], dictionary: Dictionary | None = None) -> list[Phrase]:
    """Every term in English in the query's order, place phrases last ("golden retriever on the grass")."""
    options: dict[int, list[tuple[str, float, str]]] = {}
    content = sum(p.kind in ("rule", "dictionary", "literal") for p in pieces)
    for n, p in enumerate(pieces):
        if p.kind == "rule":
            options[id(p)] = [(x.text, x.weight, "rule") for x in p.rule.expansions if x.lang == "en"]
        elif p.kind == "dictionary":
            after = next((q for q in pieces[n + 1:] if q.kind != "other"), None)
            wrapped = after is not None and after.kind == "connector" and "{}" in after.connector.en
            scene = None if wrapped or content < 2 else _scene_senses(p, dictionary)
            senses = scene or (_noun_senses(p.senses) if wrapped else p.senses)
            options[id(p)] = [(s, DICTIONARY_WEIGHT, "dictionary") for s in senses]
        elif p.kind == "literal" and p.text not in ("a", "an", "the"):
            options[id(p)] = [(p.text, table.original_weight, "rule")]
    options = {k: v for k, v in options.items() if v}
    if not any(p.kind in ("rule", "dictionary") for p in pieces if id(p) in options):
        return []         # nothing to translate: an English query is its own English phrasing
    single = len(options) == 1 and not any(p.kind == "connector" and "{}" in p.connector.en for p in pieces)
    if not single:
        # mid-sentence: no articles, and a place keeps its prepositional form when it has one
        for k, opts in options.items():
            placed = [o for o in opts if o[0].startswith(PREPOSITIONS)]
            options[k] = [(_ARTICLE.sub("", t), w, src) for t, w, src in (placed or opts)]
    key = "+".join(p.rule.key if p.rule else p.text for p in pieces if id(p) in options)
    out: list[Phrase] = []
    for i in range(max(len(o) for o in options.values())):
        front: list[str] = []
        back: list[str] = []
        last_front = False            # did the last word go to the front (so a localiser can wrap it)?
        weight, source = table.original_weight, "rule"
        for p in pieces:
            if p.kind == "connector":
                if "{}" in p.connector.en:
                    if last_front:     # wraps the word before it: 公园 + 里 -> in the park
                        back.append(p.connector.en.format(front.pop()))
                        last_front = False
                elif p.connector.en:
                    (back if back and not last_front else front).append(p.connector.en)
                continue
            if id(p) not in options:
                continue
            text, w, src = options[id(p)][i % len(options[id(p)])]
            weight, source = min(weight, w), "dictionary" if src == "dictionary" else source
            last_front = not text.startswith(PREPOSITIONS)
            (front if last_front else back).append(text)
        out.append(Phrase(" ".join(front + back), "en", weight, key, source))
    first = out[0]
    if not single and table.templates.get("en") and not first.text.startswith(PREPOSITIONS):
        text = _A_BEFORE_VOWEL.sub("an ", table.templates["en"][0].format(first.text))
        out.append(Phrase(text, "en", first.weight, key, first.source))
    return _distinct(out, None)[:MAX_RENDERINGS]


def _whole_words(pieces: list[_Piece], dictionary: Dictionary | None) -> list[_Piece]:
    """Adjacent pieces joined back into the longest word CC-CEDICT knows whole (issue 22 items 12, 13).

    Segmentation and the part-by-part fallback cut 寻回犬 ("retriever") into 寻|回|犬 and leave a
    one-character alias beside the rest of its word; a dictionary word longer than every table term
    inside it is looked up whole. Connecting words and Latin text are never joined.
    """
    if dictionary is None:
        return pieces
    joinable = {"rule", "dictionary", "untranslated"}
    out: list[_Piece] = []
    i = 0
    while i < len(pieces):
        for j in range(len(pieces), i + 1, -1):
            run = pieces[i:j]
            text = "".join(p.text for p in run)
            if len(text) > MAX_COMPOUND or not all(p.kind in joinable for p in run):
                continue
            longest_rule = max((len(p.text) for p in run if p.kind == "rule"), default=0)
            if len(text) > longest_rule and (senses := dictionary.senses(text)):
                out.append(_Piece(text, "dictionary", senses=senses))
                i = j
                break
        else:
            out.append(pieces[i])
            i += 1
    return out


def _noun_senses(senses: list[str]) -> list[str]:
    """The senses that read as nouns first ("seacoast" before "coastal"), all of them when none do."""
    nouns = [s for s in senses if not _ADJECTIVE.search(s.split()[-1])]
    return nouns + [s for s in senses if s not in nouns]


def _scene_senses(piece: _Piece, dictionary: Dictionary | None) -> list[str] | None:
    """A dictionary word in a scene slot, placed as the table places scenes ("at the seacoast", "at midnight");
    None when the word names no place or time (可爱的狗 stays "cute dog")."""
    times = [s for s in piece.senses if s.split()[-1] in TIME_SENSES]
    if times:
        return [s if s.startswith(PREPOSITIONS) else f"at {s}" for s in times]
    tag = dictionary.tag(piece.text) if dictionary is not None else ""
    if tag not in SCENE_TAGS:
        return None
    nouns = [s for s in piece.senses if not _ADJECTIVE.search(s.split()[-1])] or piece.senses
    return [s if s.startswith(PREPOSITIONS) else f"at the {s}" for s in nouns]


def _distinct(phrases: list[Phrase], languages: frozenset[str] | set[str] | None) -> list[Phrase]:
    """The first phrasing of each text (the query always kept first), in ``languages``, at most MAX_VARIANTS more."""
    kept, seen = [phrases[0]], {phrases[0].text}
    for phrase in phrases[1:]:
        if (languages is None or phrase.lang in languages) and phrase.text not in seen:
            kept.append(phrase)
            seen.add(phrase.text)
    if len(kept) > MAX_VARIANTS + 1:
        log.warning("query %r has %d expansions; keeping the first %d", kept[0].text, len(kept) - 1, MAX_VARIANTS)
        kept = kept[:MAX_VARIANTS + 1]
    return kept
