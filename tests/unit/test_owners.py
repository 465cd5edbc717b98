"""What the library owns that the CLI used to: batch search with partial results, near-duplicate
groups, zero-shot class vectors pooled like queries, query files, and one searcher for the page."""

from __future__ import annotations

import json

import pytest
import numpy as np
import torch

from clip_retrieval import api, evaluate
from clip_retrieval.features import store
from clip_retrieval.dedup import near_duplicate_groups
from clip_retrieval.core.errors import InputError
from clip_retrieval.search import pool, pool_each

from tests.conftest import ROOT

RULES = ROOT / "rules" / "expansions.yaml"


def test_batch_search_reports_a_bad_query_and_runs_the_rest(tiny_features, tmp_path):
    searcher = api.open_searcher(tiny_features, rules=RULES, device="cpu")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a picture")
    items = [("金毛", None), (None, str(bad)), ("", None), ("灰猫", None)]
    outcomes = list(api.search_many(searcher, items, k=3, log_dir=tmp_path))
    assert [o.n for o in outcomes] == [1, 2, 3, 4]
    assert [o.error is None for o in outcomes] == [True, False, False, True]
    assert "broken.jpg" in str(outcomes[1].error) and "empty query" in str(outcomes[2].error)
    assert len(outcomes[0].result.results) == 3 and outcomes[3].result.results
    logged = [json.loads(line) for line in (tmp_path / "search_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["query"] for r in logged] == ["金毛", "灰猫"]


def test_batch_queries_from_a_file_or_a_folder(small_collection, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("\ufeff金毛\n\n  灰猫 \n", encoding="utf-8")
    assert api.batch_queries(queries=queries) == [("金毛", None), ("灰猫", None)]
    images = api.batch_queries(image_dir=small_collection.parent)
    assert len(images) == 32 and all(q is None and image.endswith((".png", ".jpg")) for q, image in images)
    with pytest.raises(InputError, match="not both"):
        api.batch_queries(queries=queries, image_dir=small_collection.parent)
    with pytest.raises(InputError, match="queries file not readable"):
        api.batch_queries(queries=tmp_path / "none.txt")


def test_near_duplicate_groups_are_transitive_and_bounded_by_the_threshold():
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.nn.functional.normalize(torch.tensor([1.0, 0.1, 0.0]), dim=0)
    c = torch.nn.functional.normalize(torch.tensor([1.0, 0.2, 0.0]), dim=0)
    far = torch.tensor([0.0, 0.0, 1.0])
    x = torch.stack([a, far, b, c])
    groups = near_duplicate_groups(x, threshold=float(a @ b) - 1e-4, block=2)
    assert [[i for i, _ in g] for g in groups] == [[0, 2, 3]]  # a~b, b~c: one group although a and c are further
    assert groups[0][0] == (0, pytest.approx(1.0)) and groups[0][2][1] == pytest.approx(float(a @ c))
    assert near_duplicate_groups(x, threshold=1.0) == []
    with pytest.raises(InputError, match="threshold"):
        near_duplicate_groups(x, threshold=0.0)


def test_pool_each_pools_consecutive_groups():
    v = torch.eye(3)
    out = pool_each(v, [[1.0, 3.0], [2.0]])
    assert np.allclose(out[0], pool(v[:2], [1.0, 3.0])) and np.allclose(out[1], v[2].numpy())
    assert pool_each(v[:0], []).shape == (0, 3)


def test_label_vectors_pool_each_labels_prompts(tiny_open_clip):
    from clip_retrieval.models import load_encoder
    from clip_retrieval.query.expansion import load_rules
    from clip_retrieval.zeroshot import label_vectors

    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), device="cpu")
    table = load_rules(RULES)
    vectors = label_vectors(encoder, ["猫", "狗"], table)
    phrases = table.expand("狗", encoder.languages).pooled
    prompts = [(p, ph.weight) for ph in phrases for p in table.prompts(ph.text, ph.lang)]
    want = pool(encoder.encode_texts([p for p, _ in prompts]), [w for _, w in prompts])
    assert vectors.shape == (2, encoder.dim) and np.allclose(vectors[1], np.asarray(want), atol=1e-5)


def test_query_file_written_is_read_back(tiny_features, tmp_path):
    feats = store.load(tiny_features, with_text=False)
    first, second = feats.manifest.images[0]["path"], feats.manifest.images[1]["path"]
    path = evaluate.write_query_file(tmp_path / "q.csv", [("金毛", first), ("金毛", second), ("灰猫", second)],
                                     feats.manifest.root)
    qs = evaluate.file_queries(path, feats.manifest)
    assert qs.queries == ["金毛", "灰猫"] and qs.relevant == [{0, 1}, {1}]


def test_the_page_searches_with_expansion_off_through_its_one_searcher(tiny_features, tmp_path, monkeypatch):
    import shutil

    from clip_retrieval.web import Page

    features = tmp_path / "f"   # the page logs beside the features: keep the shared fixture clean
    shutil.copytree(tiny_features, features)
    page = Page(str(features), str(RULES), device="cpu")
    calls = []
    real = page.searcher.nearest
    monkeypatch.setattr(page.searcher, "nearest", lambda v, k, where=None: calls.append(k) or real(v, k, where))
    status, gallery = page.text_search("金毛", False, 4)
    # random weights: nothing is relevant, so the page shows no pictures and says why (issue 24)
    assert calls == [4] and len(gallery) == 0 and "off" in status and "nothing relevant" in status


def test_every_output_gets_the_mode_the_umask_gives(small_collection, tiny_open_clip, tmp_path):
    """Features, manifest, expansion cache, index files and grids: not 0600 as mkstemp made them."""
    import os
    import stat

    from clip_retrieval.grid import render_grid

    old = os.umask(0o027)
    try:
        out = tmp_path / "f"
        api.extract_features(csv=small_collection, model="open_clip:tiny", checkpoint=str(tiny_open_clip), out=out,
                             num_workers=0, device="cpu", quiet=True, rules=RULES)
        api.build_index(out, backend="faiss", kind="hnsw")
        searcher = api.open_searcher(out, rules=RULES, device="cpu")
        result = searcher.search_text("金毛", k=2)
        render_grid(tmp_path / "grid.png", result.query, result.results)
    finally:
        os.umask(old)
    files = [p for p in out.iterdir() if p.is_file()] + [tmp_path / "grid.png"]
    assert {"manifest.json", "image_features.pt", "expansion_cache.pt", "index.json"} <= {p.name for p in files}
    assert any(p.suffix == ".faiss" for p in files)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o640) for p in files}
