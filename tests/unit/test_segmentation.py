"""Query segmentation without jieba's dictionary load, and the word file behind it (issue 15).

The expected cuts come from jieba itself (``Tokenizer`` + ``add_word`` + ``lcut``), the
code our segmenter replaces on the query path.
"""

import logging
import os
import random
import shutil
import stat
import threading
from pathlib import Path

import jieba
import pytest

from clip_retrieval.query import dictionary
from clip_retrieval.query.dictionary import Dictionary, load_dictionary, read_jieba, words_file
from clip_retrieval.query.expansion import load_rules
from clip_retrieval.query.segmentation import USER_WORD_FREQ, Segmenter

ROOT = Path(__file__).resolve().parents[2]
QUERIES = ["草地上的金毛", "窗边的台灯", "桌上的咖啡杯", "一只在雪地里奔跑的哈士奇", "夕阳下的海边 散步的人",
           "红色的T恤和蓝色牛仔裤", "小明硕士毕业于中国科学院计算所", "iPhone手机放在木桌上", "穿汉服的女孩在西湖边拍照",
           "地铁站里的人群，下雨天", "他来到了网易杭研大厦", "  多个  空格\t和\r\n换行  ", "3.5公斤的猫%", "c++和c#"]


@pytest.fixture(scope="module")
def table():
    return load_rules(ROOT / "rules" / "expansions.yaml")


@pytest.fixture(scope="module")
def reference(table):
    """jieba as the expansion used it before: its full dictionary plus the table's words of two or more
    characters (a one-character term is not registered: it would split 绿地 into 绿 + 地)."""
    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    for term in [*table.terms(), *table._connector]:
        if " " not in term and len(term) > 1:
            tokenizer.add_word(term, freq=USER_WORD_FREQ)
    return tokenizer


def _random_queries(table, n: int, seed: int) -> list[str]:
    words, _ = read_jieba(Path(jieba.__file__).parent / "dict.txt")
    vocabulary = sorted(words)[::499]
    rng = random.Random(seed)
    terms = table.terms()
    return [rng.choice(["", "的", "在", "和", " "]).join(
        rng.choice(terms) if rng.random() < 0.4 else rng.choice(vocabulary) for _ in range(rng.randint(1, 5)))
        for _ in range(n)]


def test_cuts_equal_jiebas_with_the_table_registered(table, reference):
    queries = QUERIES + _random_queries(table, 400, seed=15)
    differ = [(q, table.segment(q), reference.lcut(q)) for q in queries if table.segment(q) != reference.lcut(q)]
    assert differ == []
    # the comparison means something: the registered words change jieba's cuts, and the HMM runs
    # (jieba's README: "杭研" is found by the HMM, being in no dictionary)
    plain = jieba.Tokenizer()
    assert sum(plain.lcut(q) != reference.lcut(q) for q in queries) > 20
    assert "杭研" in table.segment("他来到了网易杭研大厦")


def test_registered_words_are_never_split_and_text_is_kept_whole():
    words = Dictionary(frequencies={"窗": 50, "边": 60, "台灯": 80, "台": 90, "灯": 70, "窗边": 40})
    plain = Segmenter(words)
    assert plain.cut("窗边的台灯") == ["窗边", "的", "台灯"]
    registered = Segmenter(words, ["边的台"])
    assert registered.cut("窗边的台灯") == ["窗", "边的台", "灯"]
    for text in ["窗边的台灯", " a b\t窗", "窗边，台灯！"]:
        assert "".join(plain.cut(text)) == text


def test_the_query_path_never_loads_jiebas_dictionary(table, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("jieba's dictionary was loaded")

    monkeypatch.setattr(jieba.Tokenizer, "initialize", refuse)
    fresh = load_rules(ROOT / "rules" / "expansions.yaml")
    exp = fresh.expand("桌上的咖啡杯", languages={"en"}, dictionary=load_dictionary())
    assert "咖啡" in exp.matched
    assert any("coffee" in p.text for p in exp.phrases)


def test_word_file_is_built_once_and_follows_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path))
    old = os.umask(0o027)
    try:
        path = words_file()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    first = path.stat()
    assert words_file() == path and path.stat().st_ino == first.st_ino     # found, not rebuilt
    d = load_dictionary()
    jieba_words, total = read_jieba(Path(jieba.__file__).parent / "dict.txt")
    assert d.total == total and d.frequencies(["咖啡", "窗边的"]) == {"咖啡": jieba_words["咖啡"]}
    assert "snow" in d.senses("雪") and d.senses("窗边的") == [] and len(d) > 80_000


def test_a_failed_build_leaves_nothing_and_the_next_one_works(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path))

    def broken_read(path):
        raise ValueError(f"invalid dictionary entry in {path}")

    monkeypatch.setattr(dictionary, "read_jieba", broken_read)
    with pytest.raises(ValueError):
        words_file()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path))
    assert words_file().is_file()


def test_dictionary_answers_from_many_threads(table):
    d = load_dictionary()
    keys = [r.key for r in table.rules][:40]
    expected = {k: Dictionary(locate=words_file).senses(k) for k in keys}
    seen: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def ask(k: str) -> None:
        try:
            seen[k] = d.senses(k)
        except BaseException as exc:    # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and seen == expected


def test_a_cache_that_cannot_be_written_still_answers_and_says_how_to_fix_it(tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(blocked))
    with caplog.at_level(logging.WARNING, logger="clip_retrieval.query.dictionary"):
        first = words_file()
        assert words_file() == first          # built once per process, not per lookup
    assert "CLIP_RETRIEVAL_CACHE" in caplog.text and caplog.text.count("temporary copy") == 1
    exp = load_rules(ROOT / "rules" / "expansions.yaml").expand("窗边的台灯", languages={"en"},
                                                                 dictionary=load_dictionary())
    assert any(p.source == "dictionary" and "lamp" in p.text for p in exp.phrases)


def test_the_first_extraction_with_rules_prepares_the_word_file(tmp_path, monkeypatch, tiny_open_clip,
                                                               small_collection, caplog):
    from clip_retrieval import api

    built: list[Path] = []
    monkeypatch.setattr(dictionary, "_build", lambda target, jieba_dict: built.append(target))
    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    api.extract_features(csv=small_collection, model="open_clip:tiny", checkpoint=str(tiny_open_clip),
                         out=tmp_path / "out", num_workers=0, device="cpu", quiet=True)
    assert [p.parent for p in built] == [tmp_path / "cache"]     # made at extraction, not at the first query

    def full_disk(target, jieba_dict):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dictionary, "_build", full_disk)
    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path / "cache2"))      # a first use again
    with caplog.at_level(logging.WARNING):
        api.extract_features(csv=small_collection, model="open_clip:tiny", checkpoint=str(tiny_open_clip),
                             out=tmp_path / "out2", num_workers=0, device="cpu", quiet=True,
                             rules=ROOT / "rules" / "expansions.yaml")
    # only a preparation: the features are saved and the command succeeds, with a warning, no temporary copy
    assert (tmp_path / "out2" / "manifest.json").is_file() and "word file" in caplog.text
    assert "temporary copy" not in caplog.text


@pytest.fixture(scope="module")
def session_words() -> Path:
    """The word file in the test session's cache (built once), for tests about finding and opening it."""
    return words_file()


def _copy_of(good: Path):
    """A stand-in for ``_build`` that copies a built word file (the building is tested above)."""
    def build(target: Path, jieba_dict: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(good, target)
    return build


def test_a_relative_cache_folder_works(tmp_path, monkeypatch, session_words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", "relcache")
    monkeypatch.setattr(dictionary, "_build", _copy_of(session_words))
    assert load_dictionary().senses("雪")[:1] == ["snow"]
    assert list((tmp_path / "relcache").glob("words-*.sqlite"))


def test_a_damaged_word_file_is_built_again(tmp_path, monkeypatch, session_words):
    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path))
    good = session_words
    monkeypatch.setattr(dictionary, "_build", _copy_of(good))
    target = words_file()
    target.write_bytes(b"not a database" * 100)
    assert load_dictionary().senses("雪")[:1] == ["snow"]
    assert target.read_bytes() == good.read_bytes()
