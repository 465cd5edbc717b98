"""Query expansion through the reviewed table in ``rules/expansions.yaml``.

Owns: loading and validating the rules file (with line numbers in every error), jieba
segmentation with the table's keys protected from splitting, and ``expand_query``. It
must not encode text or search. The file's schema is documented at its top and in the
README.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import InputError

log = logging.getLogger(__name__)

LANGUAGES = ("zh", "en")
MAX_VARIANTS = 24
DEFAULT_RULES = Path("rules") / "expansions.yaml"
_PACKAGE = Path(__file__).resolve().parent
# The table shipped with the tool, for runs from another working folder: inside an installed
# wheel it is clip_retrieval/rules/ (pyproject maps rules/ there), in a source checkout the top-level rules/.
SHIPPED_RULES = next((p for p in (_PACKAGE / "rules" / "expansions.yaml", _PACKAGE.parent / "rules" / "expansions.yaml")
                      if p.is_file()), _PACKAGE.parent / "rules" / "expansions.yaml")


@dataclass(frozen=True)
class Phrase:
    """One phrasing to encode: the text, its language and its weight in the pooled vector."""

    text: str
    lang: str
    weight: float = 1.0
    term: str = ""          # the rule key that produced it ("" for the original query)


@dataclass
class Rule:
    key: str
    aliases: list[str]
    expansions: list[Phrase]
    line: int


@dataclass
class Expansion:
    """What a query turned into; ``phrases[0]`` is always the original query."""

    query: str
    phrases: list[Phrase]
    matched: list[str] = field(default_factory=list)

    @property
    def expansions(self) -> list[Phrase]:
        return self.phrases[1:]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records each mapping's line so errors can point at it."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise InputError(f"line {key_node.start_mark.line + 1}: duplicate field {key!r} "
                             f"(first at line {seen[key]})")
        seen[key] = key_node.start_mark.line + 1
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


class RuleTable:
    """The validated expansion table; build with ``load_rules``."""

    def __init__(self, rules: list[Rule], templates: dict[str, list[str]], original_weight: float,
                 sha256: str, path: str):
        self.rules = rules
        self.templates = templates
        self.original_weight = original_weight
        self.sha256 = sha256
        self.path = path
        self._lookup: dict[str, Rule] = {}
        for rule in rules:
            for term in [rule.key, *rule.aliases]:
                self._lookup[_norm(term)] = rule
        self._tokenizer = None

    def __len__(self) -> int:
        return len(self.rules)

    def lookup(self, term: str) -> Rule | None:
        return self._lookup.get(_norm(term))

    def terms(self) -> list[str]:
        """Every key and alias: what a query can match."""
        return [t for r in self.rules for t in [r.key, *r.aliases]]

    def segment(self, text: str) -> list[str]:
        """jieba words, with every key and alias registered so it is never split."""
        if self._tokenizer is None:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            for term in self.terms():
                if " " not in term:
                    tokenizer.add_word(term, freq=1_000_000)
            self._tokenizer = tokenizer
        return self._tokenizer.lcut(text)

    def expand(self, query: str, languages: frozenset[str] | set[str] = frozenset(LANGUAGES)) -> Expansion:
        """Original query plus the phrasings the table gives it, in languages the encoder reads.

        The whole query is looked up first; otherwise each matched word's variants take its
        place in the query ("草地上的金毛" -> "草地上的金毛犬", "草地上的golden retriever", ...).
        """
        query = query.strip()
        phrases = [Phrase(query, "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in query) else "en",
                          self.original_weight)]
        matched: list[str] = []
        whole = self.lookup(query)
        if whole is not None:
            matched.append(whole.key)
            phrases.append(Phrase(whole.key, "zh", self.original_weight, whole.key))
            phrases += whole.expansions
        else:
            canonical = query
            for word in self.segment(query):
                rule = self.lookup(word)
                if rule is None or rule.key in matched:
                    continue
                matched.append(rule.key)
                canonical = canonical.replace(word, rule.key)
                for phrase in [Phrase(rule.key, "zh", self.original_weight, rule.key), *rule.expansions]:
                    phrases.append(Phrase(query.replace(word, phrase.text), phrase.lang, phrase.weight, rule.key))
            # every alias replaced by its key at once: the phrasing a collection's captions most likely use
            phrases.insert(1, Phrase(canonical, "zh", self.original_weight))
        kept, seen = [phrases[0]], {phrases[0].text}
        for phrase in phrases[1:]:
            if phrase.lang in languages and phrase.text not in seen:
                kept.append(phrase)
                seen.add(phrase.text)
        if len(kept) > MAX_VARIANTS + 1:
            log.warning("query %r has %d expansions; keeping the first %d", query, len(kept) - 1, MAX_VARIANTS)
            kept = kept[:MAX_VARIANTS + 1]
        return Expansion(query=query, phrases=kept, matched=matched)

    def prompts(self, label: str, lang: str) -> list[str]:
        """The label dropped into each prompt template of ``lang`` (the label itself when none)."""
        return [t.format(label) for t in self.templates.get(lang, [])] or [label]


def _fail(path: str, line: int | None, message: str) -> InputError:
    where = f"{path} line {line}" if line else path
    return InputError(f"{where}: {message}")


def _weight(value, path: str, line: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(path, line, f"{what} must be a positive number, got {value!r}")
    return float(value)


def _phrases(value, lang: str, default_weight: float, path: str, line: int, key: str) -> list[Phrase]:
    if not isinstance(value, list):
        raise _fail(path, line, f"rule {key!r}: {lang} must be a list of phrases, got {type(value).__name__}")
    if not value:
        raise _fail(path, line, f"rule {key!r}: {lang} is an empty list; remove it or add phrases")
    out = []
    for item in value:
        if isinstance(item, str) and item.strip():
            out.append(Phrase(item.strip(), lang, default_weight, key))
        elif isinstance(item, dict) and isinstance(item.get("text"), str) and item["text"].strip():
            extra = set(item) - {"text", "weight", "__line__"}
            if extra:
                raise _fail(path, item["__line__"], f"rule {key!r}: unknown field(s) {sorted(extra)} in a phrase")
            w = _weight(item.get("weight", default_weight), path, item["__line__"], f"rule {key!r}: weight")
            out.append(Phrase(item["text"].strip(), lang, w, key))
        else:
            raise _fail(path, line, f"rule {key!r}: each {lang} phrase is a non-empty string "
                                    f"or {{text: ..., weight: ...}}, got {item!r}")
    return out


def parse_rules(text: str, path: str = "<rules>") -> RuleTable:
    """Validate a rules document; every error names the file, line and the problem."""
    try:
        doc = yaml.load(text, Loader=_LineLoader)
    except InputError as exc:
        raise InputError(f"{path} {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or "rules" not in doc:
        raise _fail(path, None, "expected a mapping with a 'rules' list (see the schema at the top of the file)")
    unknown = set(doc) - {"version", "rules", "templates", "original_weight", "__line__"}
    if unknown:
        raise _fail(path, doc["__line__"], f"unknown top-level field(s) {sorted(unknown)}")
    original_weight = _weight(doc.get("original_weight", 1.0), path, doc["__line__"], "original_weight")
    templates: dict[str, list[str]] = {}
    raw_templates = doc.get("templates") or {}
    if not isinstance(raw_templates, dict):
        raise _fail(path, None, "templates must map a language (zh, en) to a list of strings containing {}")
    for lang, items in raw_templates.items():
        if lang == "__line__":
            continue
        if lang not in LANGUAGES:
            raise _fail(path, raw_templates["__line__"], f"templates: unknown language {lang!r}; use zh or en")
        if not isinstance(items, list) or not items or not all(isinstance(t, str) and "{}" in t for t in items):
            raise _fail(path, raw_templates["__line__"],
                        f"templates.{lang} must be a non-empty list of strings, each containing {{}}")
        templates[lang] = items
    if not isinstance(doc["rules"], list) or not doc["rules"]:
        raise _fail(path, doc["__line__"], "rules must be a non-empty list")
    rules: list[Rule] = []
    owner: dict[str, tuple[str, int]] = {}
    for entry in doc["rules"]:
        if not isinstance(entry, dict):
            raise _fail(path, None, f"each rule is a mapping with key, aliases, zh, en; got {entry!r}")
        line = entry["__line__"]
        key = entry.get("key")
        if not isinstance(key, str) or not key.strip():
            raise _fail(path, line, "rule without a 'key' string")
        key = key.strip()
        extra = set(entry) - {"key", "aliases", "zh", "en", "weight", "__line__"}
        if extra:
            raise _fail(path, line, f"rule {key!r}: unknown field(s) {sorted(extra)}; allowed: key, aliases, zh, en, weight")
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
            raise _fail(path, line, f"rule {key!r}: aliases must be a list of non-empty strings")
        aliases = [a.strip() for a in aliases]
        for term in [key, *aliases]:
            if _norm(term) in owner:
                other, other_line = owner[_norm(term)]
                raise _fail(path, line, f"duplicate key or alias {term!r} (already used by rule {other!r} "
                                        f"at line {other_line})")
            owner[_norm(term)] = (key, line)
        default_weight = _weight(entry.get("weight", 1.0), path, line, f"rule {key!r}: weight")
        expansions = [p for lang in LANGUAGES if lang in entry
                      for p in _phrases(entry[lang], lang, default_weight, path, line, key)]
        if not expansions:
            raise _fail(path, line, f"rule {key!r} has no zh or en expansions")
        rules.append(Rule(key=key, aliases=aliases, expansions=expansions, line=line))
    return RuleTable(rules, templates, original_weight, hashlib.sha256(text.encode("utf-8")).hexdigest(), path)


def load_rules(path: str | os.PathLike = DEFAULT_RULES) -> RuleTable:
    """Read and validate a rules file (the default one falls back to the shipped table)."""
    path = Path(path)
    if path == DEFAULT_RULES and not path.is_file() and SHIPPED_RULES.is_file():
        path = SHIPPED_RULES
    if not path.is_file():
        raise InputError(f"rules file not found: {path}; pass --rules PATH or --no-expand")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 ({exc}); save the rules file as UTF-8") from exc
    return parse_rules(text, str(path.resolve()))
