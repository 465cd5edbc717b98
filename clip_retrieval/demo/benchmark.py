"""The demo benchmarks: held-out generated pictures, the query sets over them, and the scores.

Owns the query sets (canonical and paraphrased queries for ``demo``; single, multi-term,
Traditional and dictionary-only queries for the English-only ``demo-en``), the pipeline
stages the language benchmark compares, and running them through the public API as a user
would (``clipsou eval --benchmark demo|demo-en``). It must not be imported by the
library's work modules: it sits above ``api``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from .. import api
from .. import evaluate as ev
from ..collection.generated import SCENES, SUBJECTS, make_collection
from ..features import store
from ..query.dictionary import load_dictionary
from ..query.expansion import DEFAULT_RULES, Expansion, load_rules
from ..search import Searcher


# Phrasings the demo model never saw in training; rules/expansions.yaml maps each to the
# canonical words (the paraphrased half of the demo benchmark).
SUBJECT_PARAPHRASES = {
    "golden_retriever": ["黄金猎犬", "金毛寻回犬"],
    "husky": ["二哈", "西伯利亚雪橇犬"],
    "grey_cat": ["灰色的猫", "gray kitty"],
    "orange_cat": ["大橘", "ginger cat"],
    "black_cat": ["黑色的猫"],
    "piglet": ["猪仔", "baby pig"],
    "rabbit": ["小白兔", "bunny"],
    "red_car": ["红车", "红色轿车"],
}
SCENE_PARAPHRASES = {"grass": "草坪上", "snow": "雪景里", "beach": "沙滩上", "night": "晚上"}
# The everyday words for the demo's own subjects (issue 21 item 16): a first search for 猫 must
# find the cats, whichever colour; each word's relevant pictures are every subject it names.
EVERYDAY_WORDS = {
    "猫": ("grey_cat", "orange_cat", "black_cat"), "猫咪": ("grey_cat", "orange_cat", "black_cat"),
    "小猫": ("grey_cat", "orange_cat", "black_cat"), "狗": ("golden_retriever", "husky"),
    "狗狗": ("golden_retriever", "husky"), "小狗": ("golden_retriever", "husky"), "猪": ("piglet",),
    "兔": ("rabbit",), "小兔": ("rabbit",), "车": ("red_car",), "汽车": ("red_car",), "小汽车": ("red_car",),
}


def benchmark_queries(collection_csv: str | Path) -> dict[str, list[tuple[str, str]]]:
    """``{"canonical": [(query, image_path)], "paraphrased": [...], "everyday": [...]}`` over a generated collection.

    Each subject alone, and each scene + subject pair, is a query; its relevant images are
    those showing it. everyday: the plain words for the subjects (``EVERYDAY_WORDS``), alone and
    with each scene ("草地上的猫").
    """
    with open(collection_csv, encoding="utf-8") as fh:
        images = sorted({row["image_path"] for row in csv.DictReader(fh)})
    sets: dict[str, list[tuple[str, str]]] = {"canonical": [], "paraphrased": [], "everyday": []}
    for word, subjects in EVERYDAY_WORDS.items():
        mine = [p for p in images if Path(p).name.startswith(tuple(s + "_" for s in subjects))]
        sets["everyday"] += [(word, p) for p in mine]
        for scene in SCENES:
            sets["everyday"] += [(f"{scene.zh}的{word}", p) for p in mine if f"_{scene.key}_" in Path(p).name]
    for subject in SUBJECTS:
        mine = [p for p in images if Path(p).name.startswith(subject.key + "_")]
        sets["canonical"] += [(subject.zh, p) for p in mine]
        for para in SUBJECT_PARAPHRASES[subject.key]:
            sets["paraphrased"] += [(para, p) for p in mine]
        for scene in SCENES:
            pair = [p for p in mine if Path(p).name.startswith(f"{subject.key}_{scene.key}_")]
            sets["canonical"] += [(f"{scene.zh}的{subject.zh}", p) for p in pair]
            para = SUBJECT_PARAPHRASES[subject.key][0]
            sets["paraphrased"] += [(f"{SCENE_PARAPHRASES[scene.key]}的{para}", p) for p in pair]
    return sets


# The English-only benchmark (demo-en): multi-term queries split a subject into colour + thing
# ("雪地里的橙色猫": scene, colour, subject), and the dictionary set uses words no rule covers.
COLOUR_SPLIT = {
    "golden_retriever": ("金色", "狗"),
    "grey_cat": ("灰色", "猫"),
    "orange_cat": ("橙色", "猫"),
    "black_cat": ("黑色", "猫"),
    "piglet": ("粉色", "小猪"),
    "rabbit": ("白色", "兔子"),
    "red_car": ("红色", "小汽车"),
}
DICTIONARY_SUBJECTS = {"兔": ("rabbit",), "猪": ("piglet",), "犬": ("golden_retriever", "husky")}
DICTIONARY_SCENES = {"grass": "草上", "snow": "雪上", "beach": "海旁"}
# Questions a person types (issue 22 item 11): particles, 有没有 / 是不是 / 吗 and measure words
# around the subject and scene, never content to render.
QUESTION_FORMS = ("{scene}有没有{subject}", "{scene}有{subject}吗", "是不是{scene}的{subject}",
                  "有没有{scene}的一只{subject}", "{scene}的{subject}在哪里")
# Words the table does not hold but CC-CEDICT does, whole (item 13: 寻回犬 is one word, "retriever"),
# and ordinary words a one-character alias would split (item 12: 绿地 is not 绿 + 地, 跑车 not 跑 + 车).
COMPOUND_SUBJECTS = {"golden_retriever": ("寻回犬", "金色寻回犬"), "red_car": ("跑车", "红色跑车")}
# Scene words only the dictionary knows (items 12, 14), placed as scenes: 海岸 "at the coast", not "coastal".
COMPOUND_SCENES = {"grass": ("绿地上",), "snow": ("白雪中",), "beach": ("海岸", "海岸边"), "night": ("半夜", "深夜里")}


def language_benchmark_queries(collection_csv: str | Path) -> dict[str, list[tuple[str, str]]]:
    """``{"single", "multi", "traditional", "dictionary", "question", "compound", "dictionary_scene":
    [(query, image_path)]}`` over a generated collection.

    single: one table term (each subject's key and Chinese paraphrases); multi: scene + subject
    and scene + colour + thing; traditional: the single queries in Taiwan Traditional; dictionary:
    scene + subject in words only CC-CEDICT knows ("草上的兔"); question: scene + subject asked
    five ways (``QUESTION_FORMS``); compound: subjects CC-CEDICT knows as one word, alone and in a
    scene ("雪地里的跑车"); dictionary_scene: scene words only the dictionary knows ("半夜的小猪").
    """
    import opencc

    with open(collection_csv, encoding="utf-8") as fh:
        images = sorted({row["image_path"] for row in csv.DictReader(fh)})

    def showing(subject: str, scene: str = "") -> list[str]:
        prefix = f"{subject}_{scene}_" if scene else f"{subject}_"
        return [p for p in images if Path(p).name.startswith(prefix)]

    sets: dict[str, list[tuple[str, str]]] = {"single": [], "multi": [], "traditional": [], "dictionary": [],
                                              "question": [], "compound": [], "dictionary_scene": []}
    for subject in SUBJECTS:
        names = [subject.zh] + [p for p in SUBJECT_PARAPHRASES[subject.key] if not p.isascii()]
        sets["single"] += [(name, p) for name in names for p in showing(subject.key)]
        for scene in SCENES:
            pair = showing(subject.key, scene.key)
            sets["multi"] += [(f"{scene.zh}的{subject.zh}", p) for p in pair]
            if subject.key in COLOUR_SPLIT:
                colour, thing = COLOUR_SPLIT[subject.key]
                sets["multi"] += [(f"{scene.zh}的{colour}{thing}", p) for p in pair]
            thing = "".join(COLOUR_SPLIT.get(subject.key, (subject.zh,)))
            sets["question"] += [(form.format(scene=scene.zh, subject=name), p)
                                 for form, name in zip(QUESTION_FORMS, [subject.zh, thing] * 3) for p in pair]
            sets["dictionary_scene"] += [(f"{place}的{subject.zh}", p) for place in COMPOUND_SCENES[scene.key]
                                         for p in pair]
            sets["compound"] += [(f"{scene.zh}的{word}", p) for word in COMPOUND_SUBJECTS.get(subject.key, ())
                                 for p in pair]
        sets["compound"] += [(word, p) for word in COMPOUND_SUBJECTS.get(subject.key, ()) for p in showing(subject.key)]
    to_traditional = opencc.OpenCC("s2twp")
    sets["traditional"] = [(to_traditional.convert(q), p) for q, p in sets["single"]]
    for word, subjects in DICTIONARY_SUBJECTS.items():
        for scene_key, place in DICTIONARY_SCENES.items():
            sets["dictionary"] += [(f"{place}的{word}", p) for s in subjects for p in showing(s, scene_key)]
    return sets


def _benchmark_collection(workdir: Path, model: str, device: str, quiet: bool) -> tuple[Path, Path]:
    """The held-out benchmark pictures (seed 2000: training used 1000, the demo data 0) and their features."""
    collection = make_collection(workdir / "collection", per_pair=3, seed=2000)
    out = workdir / "features"
    api.extract_features(csv=collection, model=model, out=out, device=device, quiet=quiet, rules=None)
    return collection, out


def demo_benchmark(workdir: str | os.PathLike, rules: str | os.PathLike = DEFAULT_RULES, device: str = "auto",
                   quiet: bool = True, fuse: bool = False) -> dict:
    """The held-out demo benchmark: canonical and paraphrased queries, with and without expansion."""
    workdir = Path(workdir)
    collection, out = _benchmark_collection(workdir, "demo", device, quiet)
    encoder = api.encoder_for(store.read_manifest(out), device=device)
    report = {}
    for name, rows in benchmark_queries(collection).items():
        path = ev.write_query_file(workdir / f"{name}.csv", rows, collection.parent)
        report[name] = api.evaluate(out, queries=path, rules=rules, compare_expansion=True,
                                encoder=encoder, fuse=fuse)["text_to_image"]
    return report


BENCHMARK_STAGES = ("original", "substitution", "rendered", "rendered+dict")


def stage_expansion(searcher: Searcher, query: str, stage: str) -> Expansion:
    """The query as one pipeline stage sees it (``BENCHMARK_STAGES``): alone, the first release's
    one-term substitution, whole-language renderings, or renderings plus the dictionary."""
    if stage == "original":
        return searcher.expand(query, expand=False)
    if stage == "substitution":
        return searcher.rules.substitute(query, searcher.languages)
    if stage == "rendered":
        return searcher.rules.expand(query, searcher.languages)
    if stage == "rendered+dict":
        return searcher.rules.expand(query, searcher.languages, dictionary=load_dictionary())
    raise ValueError(f"unknown stage {stage!r}; use one of {BENCHMARK_STAGES}")


def language_benchmark(workdir: str | os.PathLike, rules: str | os.PathLike = DEFAULT_RULES, device: str = "auto",
                       quiet: bool = True, model: str = "demo-en") -> dict:
    """Chinese queries on an English-only model: ``{set: {stage: metrics}}`` (see ``language_benchmark_queries``).

    Every stage is scored on the same held-out pictures, so the stages differ only in what is pooled.
    """
    workdir = Path(workdir)
    collection, out = _benchmark_collection(workdir, model, device, quiet)
    feats = store.load(out, with_text=False)
    searcher = Searcher(feats, api.encoder_for(feats.manifest, device=device), load_rules(rules))
    report: dict = {}
    for name, rows in language_benchmark_queries(collection).items():
        qs = ev.file_queries(ev.write_query_file(workdir / f"{name}.csv", rows, collection.parent), feats.manifest)
        report[name] = {}
        for stage in BENCHMARK_STAGES:
            vectors = searcher.pooled([stage_expansion(searcher, q, stage) for q in qs.queries])
            report[name][stage] = ev.text_to_image(vectors, feats.image_features, qs.relevant)
    return report
