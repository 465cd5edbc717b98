"""The relevance benchmark: does the cutoff drop what a collection lacks and keep what it holds?

Owns the held-out collections it builds (seed 2400, pictures for ``demo`` and ``demo-en`` without two
subjects, and each other subject without one scene), its query sets (absent subjects, a present
subject in an absent scene, present queries, image queries drawn with seed 2401 of absent and present
pictures) and the figures ``clipsou eval --benchmark relevance`` prints, beside those of one fixed
cosine threshold tuned on one collection and applied to the other. It sits above ``api``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from .. import api
from ..collection.generated import SCENES, SUBJECTS, make_collection, render
from ..query.expansion import DEFAULT_RULES
from ..relevance import Calibration, bank_reference, fixed_verdicts

ABSENT_SUBJECTS = ("husky", "rabbit")
SEED, QUERY_IMAGE_SEED = 2400, 2401
MODELS = ("demo", "demo-en")
K = 5


def missing_scenes() -> dict[str, str]:
    """Each present subject's scene the collection lacks (rotating through the scenes)."""
    present = [s for s in SUBJECTS if s.key not in ABSENT_SUBJECTS]
    return {s.key: SCENES[i % len(SCENES)].key for i, s in enumerate(present)}


def _queries(workdir: Path) -> list[dict]:
    """Every query: its kind, its text or image, and the file-name prefixes of the images relevant to it."""
    missing = missing_scenes()
    rows: list[dict] = []
    for subject in SUBJECTS:
        absent = subject.key in ABSENT_SUBJECTS
        rows.append({"kind": "absent_subject" if absent else "present", "text": subject.zh,
                     "relevant": f"{subject.key}_"})
        for scene in SCENES:
            kind = "absent_subject" if absent else "absent_scene" if missing[subject.key] == scene.key else "present"
            rows.append({"kind": kind, "text": f"{scene.zh}的{subject.zh}", "relevant": f"{subject.key}_{scene.key}_"})
    rng = random.Random(QUERY_IMAGE_SEED)
    (workdir / "query_images").mkdir(parents=True, exist_ok=True)
    for subject in SUBJECTS:
        for scene in SCENES:
            path = workdir / "query_images" / f"{subject.key}_{scene.key}.png"
            render(subject, scene, rng).save(path)
            if subject.key in ABSENT_SUBJECTS:
                rows.append({"kind": "image_absent", "image": str(path), "relevant": f"{subject.key}_{scene.key}_"})
            elif missing[subject.key] != scene.key:
                rows.append({"kind": "image_present", "image": str(path), "relevant": f"{subject.key}_{scene.key}_"})
    return rows


def _run(workdir: Path, model: str, rules, device: str, quiet: bool) -> list[dict]:
    """Each query's top-k: scores, which are truly relevant, which the cutoff marks relevant."""
    missing = missing_scenes()
    pairs = {(s.key, c.key) for s in SUBJECTS if s.key not in ABSENT_SUBJECTS for c in SCENES
             if missing[s.key] != c.key}
    csv = make_collection(workdir / model / "collection", per_pair=3, seed=SEED, pairs=pairs, english=True,
                          chinese=model == "demo")
    out = workdir / model / "features"
    api.extract_features(csv=csv, model=model, out=out, device=device, quiet=quiet, rules=None, num_workers=0)
    searcher = api.open_searcher(out, rules=rules, device=device)

    def search(q: dict):
        return searcher.search_image(q["image"], k=K) if "image" in q else searcher.search_text(q["text"], k=K)
    queries = _queries(workdir / model)
    runs = []
    for q in queries:
        result = search(q)
        truth = [Path(h.image_path).name.startswith(q["relevant"]) for h in result.results]
        runs.append({**q, "scores": [h.score for h in result.results], "truth": truth,
                     "marked": [bool(h.relevant) for h in result.results]})
    image_ref = searcher.calibration.image     # as a folder without captions: the rules table as a query bank
    searcher.use_calibration(Calibration(bank_reference(searcher.store.image_features, searcher.bank_vectors(),
                                                        image_ref), image_ref))
    for run, q in zip(runs, queries):
        run["marked_no_captions"] = [bool(h.relevant) for h in search(q).results]
    return runs


def _figures(runs: list[dict], marked_of) -> dict:
    """Per kind of query: absent, the share with no hit marked relevant; present, the share keeping one,
    recall@5 over the whole top-k (today) and over the hits shown."""
    out: dict = {}
    for kind in sorted({r["kind"] for r in runs}):
        mine = [r for r in runs if r["kind"] == kind]
        marks = [marked_of(r) for r in mine]
        if kind.startswith("absent") or kind == "image_absent":
            out[kind] = {"queries": len(mine), "no_relevant_hit": float(np.mean([not any(m) for m in marks]))}
        else:
            out[kind] = {"queries": len(mine),
                         "kept_a_relevant_hit": float(np.mean([any(m) for m in marks])),
                         "recall@5_top_k": float(np.mean([any(r["truth"]) for r in mine])),
                         "recall@5_shown": float(np.mean([any(t and m for t, m in zip(r["truth"], mk))
                                                          for r, mk in zip(mine, marks)]))}
    absent = [not any(marked_of(r)) for r in runs if "absent" in r["kind"]]
    out["all_absent"] = {"queries": len(absent), "no_relevant_hit": float(np.mean(absent))}
    return out


def _tune_fixed(runs: list[dict], image: bool) -> float:
    """The one cosine threshold that best splits this collection's absent from present queries (by top score)."""
    mine = [r for r in runs if r["kind"].startswith("image") == image and r["scores"]]
    tops = sorted({round(r["scores"][0], 4) for r in mine})

    def balanced(t: float) -> float:
        absent = [r["scores"][0] < t for r in mine if "absent" in r["kind"]]
        present = [r["scores"][0] >= t for r in mine if "absent" not in r["kind"]]
        return (np.mean(absent) + np.mean(present)) / 2
    return max(tops, key=balanced)


def relevance_benchmark(workdir: str | os.PathLike, rules: str | os.PathLike = DEFAULT_RULES, device: str = "auto",
                        quiet: bool = True) -> dict:
    """``{model: {"adaptive": figures, "adaptive_no_captions": figures, "fixed": {...}}}``: the cutoff
    calibrated from the collection's captions and images, the same collection judged as a folder without
    captions (text by its robust z-score), and a fixed threshold tuned on the other model's collection."""
    workdir = Path(workdir)
    runs = {model: _run(workdir, model, rules, device, quiet) for model in MODELS}
    report: dict = {}
    for model in MODELS:
        other = next(m for m in MODELS if m != model)
        text_t, image_t = _tune_fixed(runs[other], False), _tune_fixed(runs[other], True)

        def fixed(r: dict) -> list[bool]:
            return fixed_verdicts(np.asarray(r["scores"]), image_t if r["kind"].startswith("image") else text_t)
        report[model] = {"adaptive": _figures(runs[model], lambda r: r["marked"]),
                         "adaptive_no_captions": _figures(runs[model], lambda r: r["marked_no_captions"]),
                         "fixed": {"tuned_on": other, "text_threshold": text_t, "image_threshold": image_t,
                                   **_figures(runs[model], fixed)}}
    return report


def format_report(report: dict) -> str:
    """The figures as a table: one line per kind of query, the adaptive cutoff beside the fixed threshold."""
    lines = []
    for model, parts in report.items():
        fixed, bare = parts["fixed"], parts["adaptive_no_captions"]
        lines.append(f"{model}: adaptive cutoff / 自适应阈值 | as a folder without captions / 无描述 | fixed cosine "
                     f"{fixed['text_threshold']:.4f} (text), {fixed['image_threshold']:.4f} (image), tuned on "
                     f"{fixed['tuned_on']} / 固定阈值")
        for kind, figures in parts["adaptive"].items():
            shown = "  ".join(f"{name} {value:.3f} | {bare[kind][name]:.3f} | {fixed[kind][name]:.3f}"
                              for name, value in figures.items() if name != "queries")
            lines.append(f"  {kind:<15} ({figures['queries']:>2} queries)  {shown}")
    return "\n".join(lines)
