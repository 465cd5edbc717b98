"""The rules table: validation with line numbers, matching, language filtering, and its coverage."""

from __future__ import annotations

import pytest

from clip_retrieval.core.errors import InputError
from clip_retrieval.query.expansion import load_rules, parse_rules

from tests.conftest import ROOT

GOOD = """\
version: 1
templates:
  zh: ["一张{}的照片"]
  en: ["a photo of {}"]
rules:
  - key: 金毛
    aliases: [黄金猎犬]
    zh: [金毛犬]
    en: [golden retriever, {text: golden dog, weight: 0.5}]
  - {key: 草地, aliases: [草坪], zh: [草坪], en: [grass]}
"""


def test_whole_query_match_with_weights_and_templates():
    table = parse_rules(GOOD)
    exp = table.expand("金毛")
    assert [(p.text, p.lang, p.weight) for p in exp.phrases] == [
        ("金毛", "zh", 1.0), ("金毛犬", "zh", 1.0), ("golden retriever", "en", 1.0), ("golden dog", "en", 0.5)]
    assert table.prompts("猫", "en") == ["a photo of 猫"]


def test_alias_adds_the_key():
    texts = [p.text for p in parse_rules(GOOD).expand("黄金猎犬").phrases]
    assert texts[:2] == ["黄金猎犬", "金毛"]


def test_substitution_stage_keeps_the_first_release_behaviour():
    exp = parse_rules(GOOD).substitute("草坪上的黄金猎犬")
    texts = [p.text for p in exp.phrases]
    assert texts[0] == "草坪上的黄金猎犬"
    assert texts[1] == "草地上的金毛"            # all aliases replaced by their keys at once
    assert "草坪上的golden retriever" in texts
    assert "grass上的黄金猎犬" in texts
    assert exp.matched == ["草地", "金毛"]
    assert exp.pooled == exp.phrases             # the benchmark's baseline pools everything


def test_a_table_without_connectors_drops_the_words_between_terms():
    exp = parse_rules(GOOD).expand("草坪上的黄金猎犬", languages={"en"})
    assert [p.text for p in exp.pooled][:2] == ["grass golden retriever", "grass golden dog"]
    assert exp.matched == ["草地", "金毛"]


def test_languages_the_encoder_cannot_read_are_dropped():
    texts = [p.text for p in parse_rules(GOOD).expand("金毛", languages={"zh"}).phrases]
    assert texts == ["金毛", "金毛犬"]


def test_no_match_gives_only_the_query():
    assert [p.text for p in parse_rules(GOOD).expand("今天天气").phrases] == ["今天天气"]


@pytest.mark.parametrize("doc, message", [
    ("rules:\n  - {key: a, zh: [x]}\n  - {key: b, aliases: [a], zh: [y]}\n",
     r"<rules> line 3: duplicate key or alias 'a' \(already used by rule 'a' at line 2\)"),
    ("rules:\n  - {key: a, zh: x}\n", r"line 2: rule 'a': zh must be a list"),
    ("rules:\n  - {key: a, zh: []}\n", r"line 2: rule 'a': zh is an empty list"),
    ("rules:\n  - {key: a, en: [{text: b, weight: -1}]}\n", r"line 2: rule 'a': weight must be a positive"),
    ("rules:\n  - {key: a, fr: [b]}\n", r"line 2: rule 'a': unknown field"),
    ("rules:\n  - {key: a}\n", r"line 2: rule 'a' has no zh or en expansions"),
    ("rules:\n  - {key: a, zh: [b], zh: [c]}\n", r"line 2: duplicate field 'zh'"),
    ("templates: {zh: [没有占位符]}\nrules:\n  - {key: a, zh: [b]}\n", r"templates.zh must be"),
    ("rules: [\n", r"not valid YAML"),
    ("- just a list\n", r"expected a mapping with a 'rules' list"),
])
def test_validation_names_the_line_and_problem(doc, message):
    with pytest.raises(InputError, match=message) as caught:
        parse_rules(doc)
    assert str(caught.value).startswith("规则文件")       # in Chinese too, as every error a user can cause


def test_missing_file_says_how_to_go_on(tmp_path):
    with pytest.raises(InputError, match="找不到规则文件.*--no-expand"):
        load_rules(tmp_path / "nope.yaml")


def test_shipped_table_is_valid_and_covers_what_people_type():
    table = load_rules(ROOT / "rules" / "expansions.yaml")
    assert len(table) >= 200
    for key in ["金毛", "哈士奇", "柯基", "灰猫", "橘猫", "小猪", "海边", "雪地", "夜景", "春天", "秋天",
                "饺子", "孩子", "奔跑", "红色", "老虎"]:
        assert table.lookup(key) is not None, key
    english = {p.text for r in table.rules for p in r.expansions if p.lang == "en"}
    coco = [
        "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
        "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
        "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
        "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
        "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
        "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
        "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
        "scissors", "teddy bear", "hair drier", "toothbrush"]
    assert len(coco) == 80
    # COCO's terse "mouse" and "remote" are spelt out so a CLIP text tower reads the right sense
    spelled = {"mouse": "computer mouse", "remote": "remote control"}
    assert [name for name in coco if spelled.get(name, name) not in english] == []


def test_at_most_four_whole_phrasings_per_language():
    """A term with six phrasings a language still gives four renderings of it in that language (the cap)."""
    table = parse_rules("rules:\n  - {key: 金毛, zh: [甲, 乙, 丙, 丁, 戊, 己], en: [a1, a2, a3, a4, a5, a6]}\n"
                        "  - {key: 草地, zh: [草坪], en: [on the grass]}\n"
                        "connectors:\n  - {zh: [的], en: ''}\n", "r.yaml")
    exp = table.expand("草地的金毛", languages={"zh", "en"})
    rendered = [p for p in exp.phrases if p.source == "rule"]
    # four Chinese renderings, the first being the query itself (so not repeated)
    assert [p.text for p in rendered if p.lang == "zh"] == ["草坪的甲", "草地的乙", "草坪的丙"]
    assert [p.text for p in rendered if p.lang == "en"] == ["a1 on the grass", "a2 on the grass", "a3 on the grass",
                                                            "a4 on the grass"]


@pytest.mark.parametrize("templates", ["{fr: ['une photo de {}']}", "{zh: ['一张{}的照片'], jp: ['{}の写真']}"])
def test_an_unknown_template_language_is_refused_with_its_line(templates):
    with pytest.raises(InputError, match="unknown language") as err:
        parse_rules(f"version: 1\ntemplates: {templates}\nrules:\n  - {{key: 金毛, en: [golden retriever]}}\n", "r.yaml")
    assert "r.yaml line 2" in str(err.value) and ("'fr'" in str(err.value) or "'jp'" in str(err.value))
