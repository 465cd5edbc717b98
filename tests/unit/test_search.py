"""Pooling, the exact scan, and text search end to end with a real (tiny) model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from clip_retrieval import api
from clip_retrieval.core.errors import InputError, ModelMismatchError
from clip_retrieval.search import MAX_QUERY_CHARS, pool
from clip_retrieval.index.exact import exact_topk

from tests.conftest import ROOT


def test_pool_is_the_renormalised_weighted_mean():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert np.allclose(pool(a, [1.0, 1.0]), np.array([1.0, 1.0]) / 2 ** 0.5)
    weighted = pool(a, [3.0, 1.0])
    assert np.allclose(weighted, np.array([3.0, 1.0]) / 10 ** 0.5)
    assert abs(float(np.linalg.norm(weighted)) - 1.0) < 1e-6


def test_exact_topk_matches_full_sort_with_stable_ties():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((1000, 16)).astype(np.float32)
    m[10] = m[20]  # a tie: lower index first
    q = m[10] / np.linalg.norm(m[10])
    idx, scores = exact_topk(m, q, 7)
    full = sorted(range(1000), key=lambda i: (-float(m[i] @ q), i))[:7]
    assert idx.tolist() == full
    assert np.allclose(scores, m[full] @ q)
    assert exact_topk(m, q, 5000)[0].shape == (1000,)


def test_search_ranks_by_the_pooled_query_vector(tiny_features, tiny_open_clip):
    searcher = api.open_searcher(tiny_features, rules=ROOT / "rules" / "expansions.yaml", device="cpu")
    result = searcher.search_text("海岸的金毛", k=4)      # rule phrasings at 1, dictionary ones at 0.5
    phrases = result.expansion.pooled
    assert len(phrases) > 3 and phrases[0].text == "海岸的金毛" and len({p.weight for p in phrases}) > 1
    # the expected vector by hand, not through the pooling under test: weighted sum of the encoder's
    # unit vectors, each phrase at its own weight, scaled back to unit length
    vectors = np.asarray(searcher.encoder.encode_texts([p.text for p in phrases]), dtype=np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    summed = sum(p.weight * v for p, v in zip(phrases, vectors))
    want = summed / np.linalg.norm(summed)
    scores = searcher.store.image_features @ want
    order = np.argsort(-scores, kind="stable")[:4].tolist()
    assert [h.index for h in result.results] == order
    assert [h.rank for h in result.results] == [1, 2, 3, 4]
    assert np.allclose([h.score for h in result.results], scores[order], atol=1e-5)
    no_exp = searcher.search_text("海岸的金毛", k=4, expand=False)
    assert no_exp.expansions == [] and [h.score for h in no_exp.results] != [h.score for h in result.results]


def test_caption_query_finds_its_own_image_with_matching_text_vector(tiny_features):
    """A query vector equal to an image's own vector must come back first with score 1."""
    searcher = api.open_searcher(tiny_features, rules=None, device="cpu")
    target = 5
    hits = searcher.search_vector(searcher.store.image_features[target], 3)
    assert hits[0].index == target and abs(hits[0].score - 1.0) < 1e-5
    assert hits[0].caption == searcher.store.captions_of(target)[0]


def test_empty_query_refused_and_not_logged(tiny_features, tmp_path):
    searcher = api.open_searcher(tiny_features, rules=None, device="cpu")
    with pytest.raises(InputError, match="empty query"):
        api.search(searcher, "   ", log_dir=tmp_path)
    assert not (tmp_path / "search_log.jsonl").exists()


def test_long_query_truncated_with_warning(tiny_features, tmp_path, caplog):
    searcher = api.open_searcher(tiny_features, rules=None, device="cpu")
    with caplog.at_level(logging.WARNING):
        result, _ = api.search(searcher, "猫" * (MAX_QUERY_CHARS + 50), log_dir=tmp_path)
    assert len(result.query) == MAX_QUERY_CHARS and result.truncated
    assert "truncated" in caplog.text


def test_other_model_refused(tiny_features):
    with pytest.raises(ModelMismatchError, match="open_clip:tiny"):
        api.open_searcher(tiny_features, model="cn_clip:ViT-B-16", rules=None, device="cpu")


def test_search_appends_a_reproducible_record(tiny_features, tmp_path, monkeypatch):
    searcher = api.open_searcher(tiny_features, rules=ROOT / "rules" / "expansions.yaml", device="cpu")
    result, record = api.search(searcher, "灰猫", k=3, log_dir=tmp_path)
    lines = (tmp_path / "search_log.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[-1]) == record
    for key in ("time", "query", "expansions", "model", "model_fingerprint", "features_fingerprint",
                "rules_sha256", "k", "tool_version", "results"):
        assert key in record
    assert record["time"][-6] in "+-" and "T" in record["time"]
    assert record["model_fingerprint"] == searcher.encoder.fingerprint
    text = (tmp_path / "search_log.txt").read_text(encoding="utf-8")
    assert "灰猫" in text and "灰色的猫" in text
    # collection-relative paths under the collection's root: the same lines from whichever folder it ran
    assert f"collection / 图库: {record['collection_root']}" in text
    first = record["results"][0]
    assert f"  1. {first['score']:.4f}  [{first['band']}]  {first['path']}  " in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    api.search(searcher, "灰猫", k=3, log_dir=tmp_path)
    blocks = (tmp_path / "search_log.txt").read_text(encoding="utf-8").split("\n\n")
    assert blocks[-2].split("\n")[1:] == blocks[-3].split("\n")[1:]


def test_phrase_weights_from_the_rules_file_shape_the_pooled_vector(tiny_features, tmp_path):
    """A rule's phrase weight must reach pooling: ignoring it (a plain mean) gives another vector and ranking."""
    rules = tmp_path / "weighted.yaml"
    rules.write_text("rules:\n  - {key: 金毛, zh: [金毛犬], en: [golden retriever, "
                     "{text: a red sports car at night, weight: 0.1}]}\n", encoding="utf-8")
    searcher = api.open_searcher(tiny_features, rules=rules, device="cpu", dictionary=False)
    expansion = searcher.expand("金毛")
    texts = [p.text for p in expansion.pooled]
    weights = [p.weight for p in expansion.pooled]
    assert weights == [1.0, 1.0, 1.0, 0.1]
    vectors = np.asarray(searcher.encoder.encode_texts(texts))
    weighted = (vectors * np.asarray(weights, np.float32)[:, None]).sum(0)
    weighted = weighted / np.linalg.norm(weighted)
    plain = vectors.mean(0) / np.linalg.norm(vectors.mean(0))
    assert float(weighted @ plain) < 0.9999                 # the weights make a difference worth testing
    assert np.allclose(searcher.query_vector(expansion), weighted, atol=1e-5)
    result = searcher.search_text("金毛", k=8)
    scores = searcher.store.image_features @ weighted
    assert [h.index for h in result.results] == np.argsort(-scores, kind="stable")[:8].tolist()
    assert np.allclose([h.score for h in result.results], scores[[h.index for h in result.results]], atol=1e-5)


@pytest.mark.parametrize("share", [0.2, 0.8])
def test_image_plus_text_gives_the_text_its_share(tiny_features, small_collection, share):
    """The fused vector is (1 - share) x image + share x text, renormalised: an unequal share catches a swap."""
    searcher = api.open_searcher(tiny_features, rules=ROOT / "rules" / "expansions.yaml", device="cpu")
    picture = sorted((small_collection.parent / "images").glob("*.png"))[0]
    result = searcher.search_image(picture, k=3, text="海边的小猪", text_weight=share)
    image, _ = searcher.image_vector(picture)
    text = searcher.query_vector(result.expansion)
    image, text = (np.asarray(v, dtype=np.float64) / np.linalg.norm(v) for v in (image, text))
    mixed = (1 - share) * image + share * text
    mixed /= np.linalg.norm(mixed)
    scores = searcher.store.image_features @ mixed
    assert np.allclose([h.score for h in result.results], [scores[h.index] for h in result.results], atol=1e-5)
    assert result.text_weight == share and result.mode == "image+text"
