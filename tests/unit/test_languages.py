"""Chinese queries on every kind of model: normalisation, whole-language renderings, pooling only
what the model reads, and the CC-CEDICT dictionary for words the table lacks (issue 12)."""

from __future__ import annotations

import json

import pytest

from clip_retrieval import cli
from clip_retrieval.query.dictionary import Dictionary, agreement, load_dictionary, usable_sense
from clip_retrieval.core.errors import InputError
from clip_retrieval.query.expansion import _CJK, _LATIN, MAX_RENDERINGS, load_rules, normalize_query, parse_rules, script_of

from tests.conftest import ROOT

RULES = ROOT / "rules" / "expansions.yaml"
QUERIES = ["草地上的金毛", "雪地里的橙色猫", "夜晚的红色小汽车", "金毛在草地上奔跑", "公园里的狗", "猫和狗",
           "黃金獵犬", "海边的白色兔子", "草上的兔", "a red car", "灰猫 ginger cat", "电动车"]


@pytest.fixture(scope="module")
def table():
    return load_rules(RULES)


@pytest.fixture(scope="module")
def cedict():
    return load_dictionary()


@pytest.mark.parametrize("query, english", [
    ("草地上的金毛", "golden retriever on the grass"),
    ("雪地里的橙色猫", "orange cat in the snow"),
    ("夜晚的红色小汽车", "red car at night"),
    ("金毛在草地上奔跑", "golden retriever running on the grass"),
    ("公园里的狗", "dog in the park"),           # a connector wraps the word before it
])
def test_every_matched_term_is_rendered_in_english_in_the_querys_order(table, query, english):
    exp = table.expand(query, languages={"en"})
    texts = [p.text for p in exp.pooled]
    assert texts[0] == english
    assert f"a photo of a {english}." in texts or f"a photo of an {english}." in texts
    assert all(p.lang == "en" and not _CJK.search(p.text) for p in exp.pooled)
    assert len([p for p in exp.phrases if p.source == "rule"]) <= MAX_RENDERINGS


def test_chinese_renderings_use_the_tables_chinese_in_the_querys_frame(table):
    texts = [p.text for p in table.expand("雪地里的哈士奇", languages={"zh"}).phrases]
    assert texts == ["雪地里的哈士奇", "雪中的哈士奇犬"]      # not 雪中里的: the place word already says "in"
    assert [p.text for p in table.expand("草坪上的黄金猎犬", languages={"zh"}).phrases][1] == "草地上的金毛"


@pytest.mark.parametrize("languages", [{"en"}, {"zh"}, {"zh", "en"}])
def test_no_mixed_script_phrasing_for_any_encoder(table, cedict, languages):
    for query in QUERIES:
        exp = table.expand(query, languages=languages, dictionary=cedict)
        for phrase in exp.phrases[1:]:
            mixed = bool(_CJK.search(phrase.text)) and bool(_LATIN.search(phrase.text))
            # a Chinese phrasing may keep the user's own English words only for a model that reads both
            assert not mixed or (languages == {"zh", "en"} and phrase.lang == "zh"), (query, phrase)
            assert phrase.lang == script_of(phrase.text)
        per_language = {}
        for phrase in exp.phrases:
            if phrase.source in ("rule", "dictionary"):
                per_language[phrase.lang] = per_language.get(phrase.lang, 0) + 1
        assert all(n <= MAX_RENDERINGS for n in per_language.values()), (query, per_language)


def test_chinese_is_pooled_only_by_a_model_that_reads_it(table):
    english_only = table.expand("草地上的金毛", languages={"en"})
    assert english_only.phrases[0].text == "草地上的金毛" and english_only.phrases[0] not in english_only.pooled
    assert english_only.notice is None
    both = table.expand("草地上的金毛", languages={"zh", "en"})
    assert both.pooled[0].text == "草地上的金毛"
    assert {p.lang for p in both.pooled} == {"zh", "en"}
    chinese_only = table.expand("草地上的金毛", languages={"zh"})
    assert {p.lang for p in chinese_only.pooled} == {"zh"}


def test_nothing_readable_searches_the_query_and_says_why_in_both_languages(table):
    exp = table.expand("电动车", languages={"en"})          # no rule, dictionary off
    assert [p.text for p in exp.pooled] == ["电动车"]
    assert exp.untranslated == ["电动车"]
    notice = exp.notice
    assert "电动车" in notice and "不读中文" in notice and "does not read Chinese" in notice
    assert "rules/expansions.yaml" in notice and "clipsou models" in notice
    assert "\n" not in notice
    partly = table.expand("草地上的电动车", languages={"en"})
    assert [p.text for p in partly.pooled] == ["on the grass"] and "电动车" in partly.notice
    assert table.expand("电动车", languages={"zh", "en"}).notice is None


def test_dictionary_renders_words_the_table_lacks_at_lower_weight(table, cedict):
    exp = table.expand("草上的兔", languages={"en"}, dictionary=cedict)
    first = exp.pooled[0]
    assert (first.text, first.source, first.weight) == ("rabbit on the grass", "dictionary", 0.5)
    assert exp.notice is None and exp.untranslated == []
    assert exp.grouped()["en"][0]["source"] == "dictionary"
    # a reviewed rule wins over the dictionary for the words it covers
    ruled = table.expand("草地上的金毛", languages={"en"}, dictionary=cedict)
    assert all(p.source == "rule" and p.weight == 1.0 for p in ruled.pooled)


@pytest.mark.parametrize("sense, usable", [
    ("surname Xue", None), ("variant of 兔[tu4]", None), ("CL:隻|只[zhi1]", None), ("abbr. for Tsar", None),
    ("(particle) marks a question", None), ("classifier for birds", None), ("erhua variant of 猫", None),
    ("Kangxi radical 94", None), ("rabbit", "rabbit"), ("to run", "run"), ("Car", "car"),
    ("electric vehicle (scooter, bicycle, car etc)", "electric vehicle"),
    ("a long explanation of something nobody types", None),
])
def test_dictionary_keeps_only_usable_senses(sense, usable):
    assert usable_sense(sense) == usable


def test_dictionary_prefers_common_words_to_names_and_agreement_is_measured():
    d = Dictionary.from_entries([("雪", "Xue3", ["surname Xue"]), ("雪", "xue3", ["snow", "CL:場|场[chang2]"]),
                                 ("猫", "mao1", ["cat"]), ("兔", "tu4", ["variant of 兔[tu4]"])])
    assert d.senses("雪") == ["snow"] and "兔" not in d and d.senses("兔") == []
    report = agreement([("雪", ["in the snow", "snow"]), ("猫", ["dog"]), ("狗", ["dog"])], d)
    assert report["keys_known"] == 2 and report["first_sense_agrees"] == 1
    assert report["disagreements"] == [("猫", "cat", ["dog"])]


def test_shipped_dictionary_agrees_with_most_reviewed_rules(table, cedict):
    report = agreement([(r.key, [p.text for p in r.expansions if p.lang == "en"]) for r in table.rules], cedict)
    assert report["keys_known"] >= 150 and report["first_sense_rate"] >= 0.6


@pytest.mark.parametrize("raw, normal", [
    ("黃金獵犬", "黄金猎犬"),            # Traditional characters
    ("雪地裏的哈士奇", "雪地里的哈士奇"),    # a Hong Kong variant character
    ("滑鼠", "鼠标"),                    # a Taiwan phrase
    ("計程車", "出租车"),
    ("ＧＯＬＤＥＮ　Retriever", "golden retriever"),   # full-width letters and space, case
    ("  草地 上的   金毛 ", "草地上的金毛"),            # spaces folded, none between Chinese characters
    ("金毛，草地", "金毛,草地"),
])
def test_normalisation(raw, normal):
    assert normalize_query(raw) == normal


def test_traditional_query_expands_like_its_simplified_twin(table):
    for traditional, simplified in [("黃金獵犬", "黄金猎犬"), ("草地上的灰貓", "草地上的灰猫"), ("雪地裡的小豬", "雪地里的小猪")]:
        a = table.expand(traditional, languages={"en"})
        b = table.expand(simplified, languages={"en"})
        assert [p.text for p in a.pooled] == [p.text for p in b.pooled] and a.matched == b.matched
        assert a.phrases[1].source == "normalisation" and a.phrases[1].text == simplified


def test_every_key_and_alias_survives_normalisation(table):
    moved = [t for t in table.terms() if table.lookup(normalize_query(t)) is not table.lookup(t)]
    assert moved == []


@pytest.mark.parametrize("doc, message", [
    ("rules:\n  - {key: 草地, en: [grass]}\nconnectors:\n  - {zh: [草地], en: ''}\n", "already a key or alias"),
    ("rules:\n  - {key: 草地, en: [grass]}\nconnectors:\n  - {zh: [上], en: '{} on {}'}\n", "at most one {}"),
    ("rules:\n  - {key: 草地, en: [grass]}\nconnectors:\n  - {zh: [], en: ''}\n", "non-empty list"),
    ("rules:\n  - {key: 草地, en: [grass]}\nconnectors:\n  - {zh: [上], en: a, fr: b}\n", "unknown field"),
])
def test_connectors_are_validated_with_line_numbers(doc, message):
    with pytest.raises(InputError, match=message) as err:
        parse_rules(doc, "r.yaml")
    assert "r.yaml line 4" in str(err.value)


def test_cli_groups_expansions_by_language_and_source(tiny_features, tmp_path, capsys):
    args = ["search", "--features", str(tiny_features), "--rules", str(RULES), "--log-dir", str(tmp_path),
            "--device", "cpu", "-k", "2"]
    assert cli.main([*args, "--query", "草上的兔", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["expansions"] == [e["text"] for lang in out["expansions_by_language"].values()
                                 for e in lang][1:]
    english = out["expansions_by_language"]["en"]
    assert english[0] == {"text": "rabbit on the grass", "source": "dictionary", "weight": 0.5, "pooled": True}
    assert cli.main([*args, "--query", "黃金獵犬"]) == 0
    text = capsys.readouterr().out
    assert "zh normalised / 规范化: 黄金猎犬" in text and "en rule / 规则: golden retriever" in text
    assert cli.main([*args, "--query", "草上的兔", "--no-dict", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(e["source"] != "dictionary" for lang in out["expansions_by_language"].values() for e in lang)
    records = [json.loads(line) for line in (tmp_path / "search_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records[1]["raw_query"] == "黃金獵犬" and records[1]["normalized_query"] == "黄金猎犬"
    assert [r["dictionary"] for r in records] == [True, True, False]
    assert any(e["source"] == "dictionary" for e in records[0]["expansions"])
    block = (tmp_path / "search_log.txt").read_text(encoding="utf-8")
    assert "[词典 dictionary]" in block and "normalised / 规范化: 黄金猎犬" in block


# issue 22 items 11-15: Chinese phrasings rendered as a person would translate them
@pytest.mark.parametrize("query, english", [
    ("夜里有没有兔子", "rabbit at night"),
    ("草地上有猫吗", "cat on the grass"),
    ("是不是海边的一只小猪", "piglet at the beach"),
    ("雪地里的黑猫在哪里", "black cat in the snow"),
])
def test_particles_question_forms_and_measure_words_are_not_rendered(table, cedict, query, english):
    exp = table.expand(query, languages={"en"}, dictionary=cedict)
    english_texts = [p.text for p in exp.pooled if p.lang == "en"]
    assert english_texts[0] == english
    words = {w for t in english_texts for w in t.split()}
    assert not words & {"have", "haven't", "hasn't", "there", "is", "where", "whether"}


@pytest.mark.parametrize("query, word", [("绿地上的小猪", "绿地"), ("雪里的跑车", "跑车"), ("白雪中的黑猫", "白雪")])
def test_a_one_character_alias_does_not_split_the_word_it_is_part_of(table, query, word):
    assert word in table.segment(query)


def test_words_the_dictionary_knows_whole_are_looked_up_whole(table, cedict):
    exp = table.expand("寻回犬", languages={"en"}, dictionary=cedict)
    assert [p.text for p in exp.pooled if p.lang == "en"] == ["retriever"]
    # a table term the dictionary word does not cover stays the table's ("金毛" is a rule)
    assert table.expand("金毛寻回犬", languages={"en"}, dictionary=cedict).matched == ["金毛"]


@pytest.mark.parametrize("query, english", [
    ("海岸的金色狗", "golden dog at the seacoast"),   # 海岸: "coastal; seacoast", the noun in a scene slot
    ("半夜的猪", "hog at midnight"),
    ("可爱的狗", "adorable dog"),                     # not a place or a time: not placed as a scene
])
def test_dictionary_scene_words_are_placed_as_scenes_with_noun_senses(table, cedict, query, english):
    exp = table.expand(query, languages={"en"}, dictionary=cedict)
    assert [p.text for p in exp.pooled if p.lang == "en"][0] == english


def test_json_expansions_list_only_what_was_pooled(table):
    from clip_retrieval.search import SearchResult

    exp = table.expand("黃金獵犬", languages=frozenset({"en"}))       # an English-only model
    out = SearchResult(query="黃金獵犬", expansions=exp.expansions, results=[], model="m", k=5, expand=True,
                       expansion=exp).to_json()
    assert out["expansions"] == ["golden retriever", "a golden retriever dog"]
    assert out["expansions_by_language"]["zh"][1] == {"text": "黄金猎犬", "source": "normalisation", "weight": 1.0,
                                                      "pooled": False}
