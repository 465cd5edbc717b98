"""Query normalisation: the form a query is looked up in, and which script a phrasing is written in.

Owns Traditional and regional phrases to Simplified (OpenCC), full-width to half-width, case and
spaces, and the term key the table matches on. It must not know the rules table or render anything.
"""

from __future__ import annotations

import functools
import re
import unicodedata

LANGUAGES = ("zh", "en")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_SPACE_BETWEEN_CJK = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")


def script_of(text: str) -> str:
    """The language a phrasing is written in: zh when it holds a Chinese character, else en."""
    return "zh" if _CJK.search(text) else "en"


@functools.lru_cache(maxsize=1)
def _converters():
    import opencc

    return opencc.OpenCC("t2s"), opencc.OpenCC("tw2sp"), opencc.OpenCC("hk2sp")


def normalize_query(text: str) -> str:
    """The form the table is looked up in: Simplified, half-width, lower case, single spaces.

    Traditional goes through OpenCC's Taiwan config (tw2sp: 計程車 -> 出租车, 滑鼠 -> 鼠标); when
    that finds no regional phrase but the Hong Kong config (hk2sp) does, the Hong Kong reading
    wins. NFKC turns full-width letters, digits and punctuation into ASCII; spaces between two
    Chinese characters are dropped, since Chinese is written without them.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _SPACE_BETWEEN_CJK.sub("", " ".join(text.split()))
    if not _CJK.search(text):
        return text
    t2s, tw2sp, hk2sp = _converters()
    plain, taiwan, hong_kong = t2s.convert(text), tw2sp.convert(text), hk2sp.convert(text)
    return hong_kong if taiwan == plain and hong_kong != plain else taiwan


def norm_term(text: str) -> str:
    """A key, alias or query as the table compares them: trimmed, lower case, single spaces."""
    return " ".join(text.strip().lower().split())


_norm = norm_term
