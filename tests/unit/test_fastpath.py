"""The fast path: expansion cache, incremental update, ANN index."""

from __future__ import annotations

import json

import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.index import faiss as ann
from clip_retrieval.search import Searcher
from clip_retrieval.index.exact import exact_topk

from tests.conftest import ROOT, TINY_OPEN_CLIP

RULES = ROOT / "rules" / "expansions.yaml"


def _extract(csv, checkpoint, out, **kw):
    return api.extract_features(csv=csv, model="open_clip:tiny", checkpoint=str(checkpoint), out=out,
                                num_workers=0, device="cpu", quiet=True, **kw)


def test_cache_hit_needs_no_text_encoding(small_collection, tiny_open_clip, tmp_path):
    _extract(small_collection, tiny_open_clip, tmp_path, rules=RULES)
    assert (tmp_path / store.EXPANSION_CACHE_FILE).is_file()
    loads = []

    def load():
        loads.append(1)
        return api.encoder_for(store.read_manifest(tmp_path), device="cpu")

    feats = store.load(tmp_path, with_text=False)
    from clip_retrieval.query.expansion import load_rules
    table = load_rules(RULES)
    cached = store.load_expansion_cache(tmp_path, feats.model_fingerprint, table.sha256)
    searcher = Searcher(feats, load, table, cache=cached)
    hit = searcher.search_text("金毛", k=3)
    assert loads == [] and len(hit.expansions) >= 2
    miss = searcher.search_text("金毛在雪地里打滚", k=3)   # substituted phrasings are not in the cache
    assert loads == [1]
    # the cached answer equals encoding everything afresh
    fresh = Searcher(feats, searcher.encoder, table)
    assert [h.index for h in fresh.search_text("金毛", k=3).results] == [h.index for h in hit.results]
    assert np.allclose([h.score for h in fresh.search_text("金毛", k=3).results],
                       [h.score for h in hit.results], atol=1e-5)
    assert miss.results


def test_cache_invalidated_when_rules_or_model_change(small_collection, tiny_open_clip, tmp_path):
    from clip_retrieval.models.openclip import build_model, save_checkpoint_dir

    rules = tmp_path / "rules.yaml"
    shutil.copy(RULES, rules)
    out = tmp_path / "f"
    _extract(small_collection, tiny_open_clip, out, rules=rules)
    feats = store.load(out)
    from clip_retrieval.query.expansion import load_rules
    sha = load_rules(rules).sha256
    assert store.load_expansion_cache(out, feats.model_fingerprint, sha) is not None
    rules.write_text(rules.read_text(encoding="utf-8").replace("golden retriever dog", "golden dog"), encoding="utf-8")
    new_sha = load_rules(rules).sha256
    assert store.load_expansion_cache(out, feats.model_fingerprint, new_sha) is None
    searcher = api.open_searcher(out, rules=rules, device="cpu")   # rebuilds for the new rules
    texts, _ = store.load_expansion_cache(out, feats.model_fingerprint, new_sha)
    assert "a golden dog" in texts and "a golden retriever dog" not in texts
    assert searcher.search_text("金毛").results

    other = save_checkpoint_dir(build_model(TINY_OPEN_CLIP, seed=5), TINY_OPEN_CLIP, tmp_path / "m2")
    _extract(small_collection, other, out, rules=None)
    refreshed = store.load(out)
    assert store.load_expansion_cache(out, refreshed.model_fingerprint, new_sha) is None


def test_update_equals_full_rebuild_and_encodes_only_changes(small_collection, tiny_open_clip, tmp_path):
    src = tmp_path / "coll"
    shutil.copytree(small_collection.parent, src)
    csv = src / "captions.csv"
    _extract(csv, tiny_open_clip, tmp_path / "inc", rules=None)
    lines = csv.read_text(encoding="utf-8").splitlines()
    changed_image = lines[3].split(",")[0]
    Image.new("RGB", (64, 64), (250, 0, 250)).save(src / changed_image)
    lines[5] = lines[5].split(",")[0] + ",一个全新的描述"
    removed = lines.pop(7)
    Image.new("RGB", (64, 64), (0, 250, 250)).save(src / "images" / "new.png")
    lines.append("images/new.png,新图片")
    os.utime(src / lines[10].split(",")[0])  # touched, same content: the hash keeps it
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = _extract(csv, tiny_open_clip, tmp_path / "inc", update=True, rules=None)
    assert result.encoded_images == 2 and result.reused_images == 30
    assert result.encoded_captions == 2
    _extract(csv, tiny_open_clip, tmp_path / "full", rules=None)
    inc, full = store.load(tmp_path / "inc"), store.load(tmp_path / "full")
    assert np.allclose(inc.image_features, full.image_features, atol=1e-6)
    assert np.allclose(inc.text_features, full.text_features, atol=1e-6)
    assert inc.manifest.images == full.manifest.images
    assert inc.manifest.captions == full.manifest.captions
    assert removed.split(",")[0] not in [i["path"] for i in inc.manifest.images]


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 200), d)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind, fp16", [("hnsw", False), ("ivf", False), ("hnsw", True)])
def test_ann_recall_against_exact(kind, fp16):
    x = _clustered(10_000, 64)
    started = time.perf_counter()
    built = ann.build(x, kind=kind, fp16=fp16)
    elapsed = time.perf_counter() - started
    queries = x[:50] + 0.05 * np.random.default_rng(1).standard_normal((50, 64)).astype(np.float32)
    ids, _ = built.search(queries, 10)
    recall = np.mean([len(set(ids[q]) & set(exact_topk(x, queries[q], 10)[0])) / 10 for q in range(50)])
    assert recall >= 0.95, recall
    # the build's own timing: more than nothing (10,000 vectors), no more than the call took (rounded to ms)
    assert built.meta["kind"] == kind and 0.001 <= built.meta["build_seconds"] <= round(elapsed, 3) + 0.001


def test_search_uses_the_index_and_ignores_a_stale_one(tiny_features, tmp_path):
    out = tmp_path / "f"
    shutil.copytree(tiny_features, out)
    meta = api.build_index(out, "faiss", kind="hnsw")
    assert meta["count"] == 32 and (out / ann.INDEX_FILE).is_file()
    searcher = api.open_searcher(out, rules=None, device="cpu")
    exact = api.open_searcher(out, rules=None, device="cpu", exact=True)
    assert searcher.index.name == "faiss" and exact.index.name == "exact"
    assert [h.index for h in searcher.search_text("灰猫", k=5).results] == \
        [h.index for h in exact.search_text("灰猫", k=5).results]
    store.save(out, store.load(out).image_features[::-1], store.load(out).text_features,
               store.read_manifest(out))
    assert api.open_searcher(out, rules=None, device="cpu").index.name == "exact"


def test_update_keeps_a_valid_expansion_cache(small_collection, tiny_open_clip, tmp_path):
    _extract(small_collection, tiny_open_clip, tmp_path, rules=RULES)
    cache = tmp_path / store.EXPANSION_CACHE_FILE
    before = cache.stat().st_mtime_ns
    time.sleep(0.01)
    _extract(small_collection, tiny_open_clip, tmp_path, rules=RULES, update=True)
    assert cache.stat().st_mtime_ns == before


def test_expansion_cache_that_does_not_fit_warns_and_searches_still_work(small_collection, tiny_open_clip, tmp_path,
                                                                          monkeypatch, capsys, caplog):
    """A full disk that only the expansion cache hits: extract succeeds with a warning, later searches too."""
    import errno

    from clip_retrieval import cli

    from clip_retrieval.core import ptfile

    real_write = ptfile.write

    def no_room_for_the_cache(path, entries):
        if "texts" in entries:    # the expansion cache, beside the features or shared
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, entries)

    monkeypatch.setattr(ptfile, "write", no_room_for_the_cache)
    out = tmp_path / "f"
    code = cli.main(["extract", "--csv", str(small_collection), "--model", "open_clip:tiny", "--checkpoint",
                     str(tiny_open_clip), "--out", str(out), "--num-workers", "0", "--device", "cpu", "--quiet",
                     "--rules", str(RULES)])
    assert code == 0 and "expansion cache not written" in caplog.text and "disk full" in caplog.text
    assert str(out) in caplog.text
    caplog.clear()
    assert (out / store.MANIFEST_FILE).is_file() and not (out / store.EXPANSION_CACHE_FILE).exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    code = cli.main(["search", "--features", str(out), "--query", "金毛", "--rules", str(RULES), "--device", "cpu"])
    # searches still work: from the shared copy of this model's cache when an earlier run left one, else
    # by encoding the phrasings (and warning again that the cache could not be kept)
    assert code == 0 and "金毛" in capsys.readouterr().out


def test_caption_progress_counts_captions_not_distinct_texts(tiny_open_clip, capsys):
    from clip_retrieval.models import load_encoder
    from clip_retrieval.extract import _caption_features

    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    from clip_retrieval.models import OnDemand

    feats, encoded = _caption_features(OnDemand(encoder), ["金毛", "灰猫", "金毛", "金毛", "小猪"], None,
                                       quiet=False, dim=encoder.dim)
    assert feats.shape[0] == 5 and encoded == 3
    assert "5/5" in capsys.readouterr().err


def test_update_without_model_takes_the_model_and_weights_of_the_features(cli, small_collection, tiny_open_clip,
                                                                          tmp_path):
    """A user who cannot download the default model is not told to rebuild with it."""
    out = tmp_path / "features"
    first = cli("extract", "--csv", small_collection, "--model", "open_clip:tiny", "--checkpoint", tiny_open_clip,
                "--out", out, "--quiet", "--rules", "none.yaml")
    assert first.returncode == 0, first.stderr
    again = cli("extract", "--csv", small_collection, "--out", out, "--update", "--quiet", "--rules", "none.yaml")
    assert again.returncode == 0, again.stderr
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["model"]["name"] == "open_clip:tiny"
    from clip_retrieval import api

    assert api._model_of(tmp_path / "none yet", None) == ("open_clip:ViT-B-32/openai", None)
