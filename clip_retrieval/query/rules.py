"""The reviewed expansion table in ``rules/expansions.yaml``: loading, validating, looking terms up.

Owns the rules file's schema (documented at its top and in docs/query-expansion.md), every error
naming the file and line, where the default and shipped tables are found, and a table's lookups:
keys and aliases, connecting words (with the function words it does not list), and segmentation
with its terms protected. Rendering a query belongs to ``rendering``; this module must not phrase
queries, encode text or search.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..core.errors import InputError
from . import rendering
from .normalisation import LANGUAGES, norm_term
from .rendering import FUNCTION_WORDS, Connector, Expansion, Phrase, Rule

if TYPE_CHECKING:
    from .dictionary import Dictionary

DEFAULT_RULES = Path("rules") / "expansions.yaml"
_PACKAGE = Path(__file__).resolve().parent.parent     # clip_retrieval/, this module lives in clip_retrieval/query/
# The table shipped with the tool, for runs from another working folder: inside an installed
# wheel it is clip_retrieval/rules/ (pyproject maps rules/ there), in a source checkout the top-level rules/.
SHIPPED_RULES = next((p for p in (_PACKAGE / "rules" / "expansions.yaml", _PACKAGE.parent / "rules" / "expansions.yaml")
                      if p.is_file()), _PACKAGE.parent / "rules" / "expansions.yaml")


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader (libyaml's when present: 4x faster to start a search) that records each mapping's line."""


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


class RuleTable:
    """The validated expansion table; build with ``load_rules``."""

    def __init__(self, rules: list[Rule], templates: dict[str, list[str]], original_weight: float,
                 sha256: str, path: str, connectors: list[Connector] | None = None):
        self.rules = rules
        self.templates = templates
        self.original_weight = original_weight
        self.sha256 = sha256
        self.path = path
        self.connectors = connectors or []
        self._lookup: dict[str, Rule] = {}
        for rule in rules:
            for term in [rule.key, *rule.aliases]:
                self._lookup[norm_term(term)] = rule
        self._connector: dict[str, Connector] = {w: Connector([w], "", 0) for w in FUNCTION_WORDS
                                                 if norm_term(w) not in self._lookup}
        self._connector.update({w: c for c in self.connectors for w in c.words})
        self._segmenter = None

    @property
    def connecting(self) -> dict[str, Connector]:
        """Every connecting word (the table's, and the function words it does not list) -> how English renders it."""
        return self._connector

    def __len__(self) -> int:
        return len(self.rules)

    def lookup(self, term: str) -> Rule | None:
        return self._lookup.get(norm_term(term))

    def terms(self) -> list[str]:
        """Every key and alias: what a query can match."""
        return [t for r in self.rules for t in [r.key, *r.aliases]]

    def mentions_a_term(self, text: str) -> bool:
        """Whether any key or alias occurs in ``text`` (segmentation can only match those)."""
        norm = norm_term(text)
        return any(term in norm for term in self._lookup)

    def segment(self, text: str) -> list[str]:
        """jieba's words, with every key, alias and connecting word of two or more characters registered so it is
        never split. A one-character term cannot be split, and registering it at a user word's frequency would
        make it beat the ordinary words it is part of (绿地 is not 绿 + 地, 跑车 not 跑 + 车: issue 22 item 12)."""
        if self._segmenter is None:
            from .dictionary import load_dictionary
            from .segmentation import Segmenter

            self._segmenter = Segmenter(load_dictionary(),
                                        [t for t in [*self.terms(), *self._connector] if " " not in t and len(t) > 1])
        return self._segmenter.cut(text)

    def substitute(self, query: str, languages: frozenset[str] | set[str] = frozenset(LANGUAGES)) -> Expansion:
        """The first release's one-term substitution (the benchmark's ``substitution`` stage; see ``rendering``)."""
        return rendering.substitute(self, query, languages)

    def expand(self, query: str, languages: frozenset[str] | set[str] = frozenset(LANGUAGES),
               dictionary: Dictionary | None = None) -> Expansion:
        """The query, its normalised form, and whole-language renderings in each language the encoder reads
        (``rendering.expand``)."""
        return rendering.expand(self, query, languages, dictionary)

    def prompts(self, label: str, lang: str) -> list[str]:
        """The label dropped into each prompt template of ``lang`` (the label itself when none)."""
        return [t.format(label) for t in self.templates.get(lang, [])] or [label]


def _fail(path: str, line: int | None, message: str) -> InputError:
    """A rules-file error: the file, the line, what is wrong (a reviewer's table, so the schema's words)."""
    where = f"{path} line {line}" if line else path
    return InputError(f"规则文件有误，请按提示修改 / rules file error: {where}: {message}")


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
        raise InputError(f"规则文件有误 / rules file error: {path} {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"规则文件不是合法的 YAML / {path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or "rules" not in doc:
        raise _fail(path, None, "expected a mapping with a 'rules' list (see the schema at the top of the file)")
    unknown = set(doc) - {"version", "rules", "templates", "original_weight", "connectors", "__line__"}
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
            if norm_term(term) in owner:
                other, other_line = owner[norm_term(term)]
                raise _fail(path, line, f"duplicate key or alias {term!r} (already used by rule {other!r} "
                                        f"at line {other_line})")
            owner[norm_term(term)] = (key, line)
        default_weight = _weight(entry.get("weight", 1.0), path, line, f"rule {key!r}: weight")
        expansions = [p for lang in LANGUAGES if lang in entry
                      for p in _phrases(entry[lang], lang, default_weight, path, line, key)]
        if not expansions:
            raise _fail(path, line, f"rule {key!r} has no zh or en expansions")
        rules.append(Rule(key=key, aliases=aliases, expansions=expansions, line=line))
    connectors = _connectors(doc.get("connectors") or [], owner, path)
    return RuleTable(rules, templates, original_weight, hashlib.sha256(text.encode("utf-8")).hexdigest(), path,
                     connectors)


def _connectors(value, owner: dict[str, tuple[str, int]], path: str) -> list[Connector]:
    """The reviewed connecting words: each a {zh: [words], en: "on the {}" | "" | "word"} mapping."""
    if not isinstance(value, list):
        raise _fail(path, None, "connectors must be a list of {zh: [words], en: ...} mappings")
    out: list[Connector] = []
    seen: dict[str, int] = {}
    for entry in value:
        if not isinstance(entry, dict):
            raise _fail(path, None, f"each connector is a mapping with zh and en; got {entry!r}")
        line = entry["__line__"]
        extra = set(entry) - {"zh", "en", "__line__"}
        if extra:
            raise _fail(path, line, f"connector: unknown field(s) {sorted(extra)}; allowed: zh, en")
        words, en = entry.get("zh"), entry.get("en")
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise _fail(path, line, "connector: zh must be a non-empty list of words")
        if en is None:
            en = ""
        if not isinstance(en, str) or en.count("{}") > 1:
            raise _fail(path, line, f"connector {words[0]!r}: en must be a string with at most one {{}} "
                                    f"(\"on the {{}}\" wraps the word before, \"\" drops it), got {en!r}")
        for word in words:
            word = word.strip()
            if norm_term(word) in owner:
                rule, rule_line = owner[norm_term(word)]
                raise _fail(path, line, f"connector {word!r} is already a key or alias of rule {rule!r} "
                                        f"(line {rule_line})")
            if word in seen:
                raise _fail(path, line, f"connector {word!r} listed twice (first at line {seen[word]})")
            seen[word] = line
        out.append(Connector([w.strip() for w in words], en.strip(), line))
    return out


def find_rules(path: str | os.PathLike = DEFAULT_RULES) -> Path | None:
    """The rules file a path names; the default one falls back to the table shipped with the tool. None: absent."""
    path = Path(path)
    if path == DEFAULT_RULES and not path.is_file() and SHIPPED_RULES.is_file():
        return SHIPPED_RULES
    return path if path.is_file() else None


def load_rules(path: str | os.PathLike = DEFAULT_RULES) -> RuleTable:
    """Read and validate a rules file (the default one falls back to the shipped table)."""
    found = find_rules(path)
    if found is None:
        raise InputError(f"找不到规则文件 {path}；请用 --rules 指定，或加 --no-expand / rules file not found: {path}; "
                         f"pass --rules PATH or --no-expand")
    path = found
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"规则文件须为 UTF-8 编码 / {path}: not UTF-8 ({exc}); save the rules file as UTF-8") from exc
    return parse_rules(text, str(path.resolve()))
