"""The relevance benchmark: its query sets follow the collection it builds, its fixed threshold is tuned
on the other collection, and the command prints every figure."""

import json

import pytest

from clip_retrieval.collection.generated import SCENES, SUBJECTS
from clip_retrieval.demo import relevance_benchmark as rb


def test_query_sets_name_what_the_collection_lacks(tmp_path):
    rows = rb._queries(tmp_path)
    kinds = {kind: [r for r in rows if r["kind"] == kind] for kind in {r["kind"] for r in rows}}
    assert len(kinds["absent_subject"]) == 2 * (1 + len(SCENES))
    assert len(kinds["absent_scene"]) == len(SUBJECTS) - 2
    assert all(r["relevant"].split("_")[0] in ("husky", "rabbit") for r in kinds["image_absent"])
    assert len(kinds["image_present"]) == (len(SUBJECTS) - 2) * (len(SCENES) - 1)


def test_the_fixed_threshold_splits_the_tuning_collection_by_top_score():
    runs = [{"kind": "present", "scores": [0.9]}, {"kind": "present", "scores": [0.8]},
            {"kind": "absent_subject", "scores": [0.7]}, {"kind": "absent_scene", "scores": [0.6]}]
    assert rb._tune_fixed(runs, image=False) == 0.8
    figures = rb._figures([{**r, "truth": [True], "marked": [r["scores"][0] >= 0.75]} for r in runs],
                          lambda r: r["marked"])
    assert figures["all_absent"]["no_relevant_hit"] == 1.0 and figures["present"]["kept_a_relevant_hit"] == 1.0


@pytest.mark.slow
def test_eval_benchmark_relevance_prints_every_figure(cli):
    ran = cli("eval", "--benchmark", "relevance", "--json", "--quiet")
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert set(report) == {"demo", "demo-en"}
    for parts in report.values():
        assert {"absent_subject", "absent_scene", "image_absent", "present", "image_present", "all_absent"} \
            <= set(parts["adaptive"])
        assert 0.0 < parts["fixed"]["text_threshold"] < 1.0 and parts["fixed"]["tuned_on"] in report
    assert report["demo"]["adaptive"]["all_absent"]["no_relevant_hit"] >= 0.9
