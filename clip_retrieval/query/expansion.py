"""Query expansion through the reviewed table in ``rules/expansions.yaml``: the public face of three owners.

``normalisation`` owns the form a query is looked up in (Traditional and regional phrases to
Simplified, full-width to half-width, case and spaces); ``rules`` owns the rules file (schema,
validation with line numbers, the default and shipped tables) and a table's lookups and
segmentation; ``rendering`` owns what a query turns into (phrasings wholly in each language the
encoder reads, rules first, the CC-CEDICT dictionary for words the table lacks). This module
only re-exports them, so ``clip_retrieval.query.expansion`` keeps its names; it must hold no logic.
"""

from __future__ import annotations

from .normalisation import _CJK, _LATIN, LANGUAGES, _converters, _norm, norm_term, normalize_query, script_of
from .rendering import (DICTIONARY_WEIGHT, FUNCTION_WORDS, LOCALISERS, MAX_COMPOUND, MAX_RENDERINGS, MAX_VARIANTS,
                        PREPOSITIONS, SCENE_TAGS, SOURCES, TIME_SENSES, Connector, Expansion, Phrase, Rule, TermTable,
                        _distinct, _Piece, format_grouped)
from .rules import DEFAULT_RULES, SHIPPED_RULES, RuleTable, find_rules, load_rules, parse_rules

__all__ = ["DEFAULT_RULES", "DICTIONARY_WEIGHT", "FUNCTION_WORDS", "LANGUAGES", "LOCALISERS", "MAX_COMPOUND",
           "MAX_RENDERINGS", "MAX_VARIANTS", "PREPOSITIONS", "SCENE_TAGS", "SHIPPED_RULES", "SOURCES", "TIME_SENSES",
           "Connector", "Expansion", "Phrase", "Rule", "RuleTable", "TermTable", "_CJK", "_LATIN", "_Piece",
           "_converters", "_distinct", "_norm", "find_rules", "format_grouped", "load_rules", "norm_term",
           "normalize_query", "parse_rules", "script_of"]
