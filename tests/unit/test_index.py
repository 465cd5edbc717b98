"""Index backends behind one interface: exact, FAISS and Qdrant (locally on Qdrant Edge, the real engine;
qdrant-client's local mode where Edge does not import).

Features come from the tiny open_clip model over a generated collection laid out in folders,
so filters by folder and caption have something to tell apart.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from clip_retrieval import api, cli
from clip_retrieval.features import store
from clip_retrieval.core.errors import ModelMismatchError, VectorDatabaseError
from clip_retrieval.index import BACKENDS, INDEX_CONFIG, Where, open_index, read_config
from clip_retrieval.index import qdrant as qd

pytest.importorskip("qdrant_client")

# four folders; "photos/b" must match photos/b/sub but neither photos/bb nor photos_b
FOLDERS = ["photos/a", "photos/b/sub", "photos/bb", "photos_b"]
FILTERS = [Where("photos/b"), Where("photos"), Where("photos/a/"), Where(caption_contains="猫"),
           Where("photos/bb", "雪"), Where("nowhere"), Where(caption_contains="一只")]


def _extract(csv_path, checkpoint, out, **kw):
    return api.extract_features(csv=csv_path, model="open_clip:tiny", checkpoint=str(checkpoint), out=out,
                                num_workers=0, device="cpu", quiet=True, rules=None, **kw)


@pytest.fixture(scope="module")
def foldered(tmp_path_factory, tiny_open_clip):
    """96 images spread over FOLDERS, their captions, and their features: (collection csv, features)."""
    from clip_retrieval.collection.generated import make_collection

    root = tmp_path_factory.mktemp("foldered")
    made = make_collection(root / "made", per_pair=3, seed=3, size=64)
    coll = root / "coll"
    rows = list(csv.reader(made.open(encoding="utf-8")))[1:]
    out_rows = []
    for n, (path, caption) in enumerate(rows):
        target = f"{FOLDERS[n % len(FOLDERS)]}/{path.split('/')[-1]}"
        (coll / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(made.parent / path, coll / target)
        out_rows.append((target, caption))
    csv_path = coll / "captions.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows([("image_path", "caption"), *out_rows])
    features = root / "features"
    _extract(csv_path, tiny_open_clip, features)
    return csv_path, features


@pytest.fixture(scope="module")
def encoder(foldered):
    """The tiny model, loaded once for every searcher in this module."""
    return api.encoder_for(store.read_manifest(foldered[1]), device="cpu")


def _copy(features, tmp_path, name="f"):
    out = tmp_path / name
    shutil.copytree(features, out)
    return out


def _index(features, backend, *extra) -> int:
    return cli.main(["index", "--features", str(features), "--backend", backend, "--quiet", *extra])


def test_registry_names_three_backends_and_each_module_implements_the_interface():
    from clip_retrieval import index

    assert set(BACKENDS) == {"exact", "faiss", "qdrant"}
    for name in BACKENDS:
        module = index.backend(name)
        assert callable(module.create) and callable(module.open_index)


@pytest.mark.parametrize("backend", ["exact", "faiss", "qdrant"])
def test_index_json_routes_search_and_exact_still_forces_the_scan(encoder, backend, foldered, tmp_path, capsys):
    out = _copy(foldered[1], tmp_path)
    extra = ["--kind", "hnsw"] if backend == "faiss" else []
    assert _index(out, backend, *extra) == 0
    config = json.loads((out / INDEX_CONFIG).read_text(encoding="utf-8"))
    assert config["backend"] == backend and config["features_fingerprint"] == store.load(out).fingerprint
    served = api.open_searcher(out, rules=None, encoder=encoder)
    exact = api.open_searcher(out, rules=None, encoder=encoder, exact=True)
    assert served.index.name == backend and exact.index.name == "exact"
    assert [h.index for h in served.search_text("灰猫", k=8).results] == \
        [h.index for h in exact.search_text("灰猫", k=8).results]
    # the CLI takes the same route without any backend flag, and logs which backend answered
    capsys.readouterr()
    assert cli.main(["search", "--features", str(out), "-q", "灰猫", "--no-expand", "--json", "-k", "3"]) == 0
    record = json.loads((out / "search_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["backend"] == backend


def test_qdrant_local_returns_the_exact_top_k(foldered, tmp_path):
    out = _copy(foldered[1], tmp_path)
    api.build_index(out, "qdrant")
    feats = store.load(out, with_text=False)
    served = open_index(feats)
    exact = open_index(feats, exact=True)
    queries = feats.image_matrix() + 0.05 * np.random.default_rng(0).standard_normal(feats.image_matrix().shape,
                                                                                       dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows, scores = served.search(queries, 10)
    truth_rows, truth_scores = exact.search(queries, 10)
    assert served.name == "qdrant"
    assert (rows == truth_rows).all()
    assert np.allclose(scores, truth_scores, atol=1e-5)


def test_filters_give_the_same_results_from_every_backend(encoder, foldered, tmp_path):
    searchers = {}
    for backend in BACKENDS:
        out = _copy(foldered[1], tmp_path, backend)
        api.build_index(out, backend, **({"kind": "hnsw"} if backend == "faiss" else {}))
        searchers[backend] = api.open_searcher(out, rules=None, encoder=encoder)
    for where in FILTERS:
        where = Where.parse(where.path_prefix, where.caption_contains)
        answers = {name: [(h.image_path.split("/", 3)[-1], h.caption) for h in
                          s.search_text("灰猫在雪地", k=6, where=where).results] for name, s in searchers.items()}
        assert answers["faiss"] == answers["exact"] == answers["qdrant"], where
        rows = searchers["exact"].store.manifest.images
        expected = sum(where is None or where.matches(r["path"], r["captions"]) for r in rows)
        assert len(answers["exact"]) == min(6, expected), where
    rows = [r["path"] for r in searchers["exact"].store.manifest.images]
    inside = {p for p in rows if p.startswith("photos/b/")}
    assert inside and all(p.startswith("photos/b/sub/") for p in inside)
    got = [h.index for h in searchers["qdrant"].search_text("猫", k=50, where=Where("photos/b")).results]
    assert {rows[i] for i in got} == inside


@pytest.mark.slow
def test_where_flags_reach_the_search_command(foldered, tmp_path, capsys):
    out = _copy(foldered[1], tmp_path)
    _index(out, "qdrant")
    capsys.readouterr()
    assert cli.main(["search", "--features", str(out), "-q", "灰猫", "--no-expand", "--json", "-k", "40",
                     "--where-path", "photos/bb", "--where-caption", "猫"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results and all("/photos/bb/" in "/" + r["image_path"] and "猫" in r["caption"] for r in results)
    record = json.loads((out / "search_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["where"] == {"path_prefix": "photos/bb", "caption_contains": "猫"}
    outcomes = api.replay_log(out / "search_log.jsonl", device="cpu")
    assert [o.identical for o in outcomes] == [True]


@pytest.mark.slow
def test_incremental_sync_writes_only_what_changed(encoder, foldered, tiny_open_clip, tmp_path):
    csv_path, features = foldered
    coll = tmp_path / "coll"
    shutil.copytree(csv_path.parent, coll)
    out = _copy(features, tmp_path)
    (out / "manifest.json").write_text((out / "manifest.json").read_text(encoding="utf-8").replace(
        json.dumps(str(csv_path.parent))[1:-1], json.dumps(str(coll))[1:-1]), encoding="utf-8")
    first = api.build_index(out, "qdrant")
    assert first["engine"] == "qdrant-edge" and first["written"] == 96
    again = api.build_index(out, "qdrant")                  # idempotent: same ids, nothing to write
    assert again["written"] == again["deleted"] == 0
    # 1% of the collection changes: one image's content
    lines = (coll / "captions.csv").read_text(encoding="utf-8").splitlines()
    changed = lines[5].split(",")[0]
    Image.new("RGB", (64, 64), (250, 0, 250)).save(coll / changed)
    _extract(coll / "captions.csv", tiny_open_clip, out, update=True)   # --update syncs the index it had
    synced = read_config(out)
    assert synced["written"] == 1 and synced["deleted"] == 1
    # a caption edited and an image removed: one point rewritten, one deleted
    lines[9] = lines[9].split(",")[0] + ",改过的描述"
    removed = lines.pop(12).split(",")[0]
    (coll / "captions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _extract(coll / "captions.csv", tiny_open_clip, out, update=True)
    synced = read_config(out)
    assert synced["written"] == 1 and synced["deleted"] == 1 and synced["count"] == 95
    assert api.build_index(out, "qdrant")["written"] == 0   # nothing left to sync
    searcher = api.open_searcher(out, rules=None, encoder=encoder)
    stored = _points(searcher.index.shard)
    assert len(stored) == 95
    paths = {p["path"] for p in stored}
    assert removed not in paths and changed in paths
    assert any(p["captions"] == ["改过的描述"] for p in stored)
    assert all(len(p["sha256"]) == 64 for p in stored)
    exact = api.open_searcher(out, rules=None, encoder=encoder, exact=True)
    assert [h.index for h in searcher.search_text("灰猫", k=10).results] == \
        [h.index for h in exact.search_text("灰猫", k=10).results]


def _points(shard) -> list[dict]:
    import qdrant_edge as edge

    records, _ = shard.scroll(edge.ScrollRequest(limit=1000, with_payload=True))
    return [r.payload for r in records]


def test_point_ids_come_from_the_content_hash():
    from clip_retrieval.index.base import Row

    a = qd.point_id(Row("x/a.png", ["猫"], "ab" * 32))
    assert a == qd.point_id(Row("x/a.png", ["狗"], "ab" * 32))      # captions live in the payload
    assert a != qd.point_id(Row("x/a.png", ["猫"], "cd" * 32))      # new content, new point
    assert a != qd.point_id(Row("y/a.png", ["猫"], "ab" * 32))      # same bytes elsewhere stay two results


def test_unreachable_server_is_named_quickly(foldered, tmp_path, capsys, monkeypatch):
    out = _copy(foldered[1], tmp_path)
    monkeypatch.setenv(qd.API_KEY_ENV, "secret-key-value")
    url = "http://127.0.0.1:9"                              # the discard port: nothing listens
    assert _index(out, "qdrant", "--qdrant-url", url) == 2
    err = capsys.readouterr().err
    assert url in err and "secret-key-value" not in err and len(err.strip().splitlines()) == 1
    assert not (out / INDEX_CONFIG).exists()


@pytest.mark.slow
def test_a_collection_from_another_model_or_dimension_is_refused(foldered, tmp_path, capsys):
    shared = tmp_path / "shared_qdrant"
    first = _copy(foldered[1], tmp_path, "first")
    assert _index(first, "qdrant", "--qdrant-path", str(shared)) == 0
    feats = store.load(first)
    other = tmp_path / "other"
    manifest = replace(feats.manifest, model=replace(feats.manifest.model, name="open_clip:other"))
    store.save(other, feats.image_features, feats.text_features, manifest)
    assert _index(other, "qdrant", "--qdrant-path", str(shared)) == 2
    err = capsys.readouterr().err
    assert "open_clip:tiny (32-d)" in err and "open_clip:other (32-d)" in err
    narrow = tmp_path / "narrow"
    store.save(narrow, feats.image_features[:, :16], feats.text_features[:, :16], feats.manifest)
    with pytest.raises(ModelMismatchError, match=r"32-d.*16-d"):
        api.build_index(narrow, "qdrant", path=shared)
    # --recreate replaces it with the new model's collection
    assert _index(other, "qdrant", "--qdrant-path", str(shared), "--recreate") == 0
    assert open_index(store.load(other, with_text=False)).name == "qdrant"


def test_eval_reports_what_the_backend_serves(encoder, foldered, tmp_path):
    out = _copy(foldered[1], tmp_path)
    api.build_index(out, "qdrant")
    report = api.evaluate(out, rules=None, encoder=encoder)
    assert report["index"]["backend"] == "qdrant" and report["index"]["agreement@10"] == 1.0
    assert report["index"]["recall@10"] == report["text_to_image"]["recall@10"]
    assert "index" not in api.evaluate(out, rules=None, encoder=encoder, exact=True)


def test_the_web_page_searches_through_the_backend_index_json_names(foldered, tmp_path):
    pytest.importorskip("gradio")
    from clip_retrieval.web import Page

    out = _copy(foldered[1], tmp_path)
    api.build_index(out, "qdrant")
    page = Page(str(out), None, device="cpu")
    assert page.searcher.index.name == "qdrant"
    page.text_search("灰猫", False, 3)
    record = json.loads((out / "search_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["backend"] == "qdrant" and len(record["results"]) == 3


# --- Qdrant Edge: the engine, its graph, whole-or-nothing rebuilds, damage, versions, concurrent use ---

def test_local_qdrant_is_an_edge_shard_with_a_graph_and_payload_indexes(foldered, tmp_path, monkeypatch):
    import qdrant_edge as edge

    from clip_retrieval.index import qdrant_edge as qe

    monkeypatch.setattr(qe, "INDEXING_THRESHOLD_KB", 1)      # 96 tiny vectors get the graph a large collection gets
    out = _copy(foldered[1], tmp_path)
    config = api.build_index(out, "qdrant")
    assert config["engine"] == "qdrant-edge" and config["engine_version"] == qe.engine_version()
    folder = qe.index_folder(out / qd.LOCAL_FOLDER, qd.DEFAULT_COLLECTION)
    shard = edge.EdgeShard.load(str(folder / qe.SHARD))
    info = shard.info()
    shard.close()
    assert info.points_count == 96 and info.indexed_vectors_count == 96
    assert {"path", "captions", "sha256"} <= set(info.payload_schema)
    feats = store.load(out, with_text=False)
    served, exact = open_index(feats), open_index(feats, exact=True)
    assert isinstance(served, qe.EdgeIndex)
    queries = feats.image_matrix()
    for where in [None, *FILTERS]:
        _same_top_k(served, exact, queries, 6, where and Where.parse(where.path_prefix, where.caption_contains))


def _same_top_k(served, exact, queries, k, where=None):
    """The same k rows and scores as the exact scan; rows whose scores tie to float precision may swap places."""
    (rows, scores), (truth, truth_scores) = served.search(queries, k, where), exact.search(queries, k, where)
    assert [set(r) for r in rows.tolist()] == [set(r) for r in truth.tolist()], where
    assert np.allclose(scores, truth_scores, atol=1e-5), where


def test_without_edge_the_client_local_mode_serves_saying_so_in_one_line(foldered, tmp_path, monkeypatch, caplog):
    from clip_retrieval.index import qdrant_edge as qe

    monkeypatch.setattr(qe, "available", lambda: False)
    out = _copy(foldered[1], tmp_path)
    config = api.build_index(out, "qdrant")
    assert config["engine"] == qd.CLIENT_LOCAL
    said = [r.getMessage() for r in caplog.records if "qdrant-client's local mode" in r.getMessage()]
    assert len(said) == 1 and "pip install qdrant-edge-py" in said[0]
    feats = store.load(out, with_text=False)
    served = open_index(feats)
    assert isinstance(served, qd.QdrantIndex)
    assert (served.search(feats.image_matrix(), 5)[0] == open_index(feats, exact=True).search(
        feats.image_matrix(), 5)[0]).all()
    # once Edge imports again, the old index still opens and says how to move it to Edge
    monkeypatch.undo()
    qd._close_local_clients()
    caplog.clear()
    assert isinstance(open_index(feats), qd.QdrantIndex)
    assert any("--recreate" in r.getMessage() and "Qdrant Edge" in r.getMessage() for r in caplog.records)


def test_client_local_mode_past_its_recommended_size_warns(foldered, tmp_path, monkeypatch, caplog):
    from qdrant_client.local.qdrant_local import QdrantLocal

    from clip_retrieval.index import qdrant_edge as qe

    monkeypatch.setattr(qe, "available", lambda: False)
    assert qd.local_size_limit() == QdrantLocal.LARGE_DATA_THRESHOLD == 20_000
    monkeypatch.setattr(QdrantLocal, "LARGE_DATA_THRESHOLD", 50)
    out = _copy(foldered[1], tmp_path)
    api.build_index(out, "qdrant")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("96" in m and "--qdrant-url" in m for m in warned), warned
    qd._close_local_clients()


def _interrupting(monkeypatch, after: int, how):
    """Make the Edge bulk load stop (``how()``) after ``after`` batches of 10 points."""
    import qdrant_edge

    from clip_retrieval.index import qdrant_edge as qe

    monkeypatch.setattr(qe, "UPLOAD_BATCH", 10)

    calls = {"n": 0}
    real_upsert = qdrant_edge.UpdateOperation.upsert_points

    class Stopping:            # the engine module, with upsert_points wrapped
        def __getattr__(self, name):
            return getattr(qdrant_edge, name)

    class Ops:
        def __getattr__(self, name):
            return getattr(qdrant_edge.UpdateOperation, name)

        @staticmethod
        def upsert_points(points):
            calls["n"] += 1
            if calls["n"] > after:
                how()
            return real_upsert(points)

    stopping = Stopping()
    stopping.UpdateOperation = Ops()
    monkeypatch.setattr(qe, "require", lambda name: stopping)


def test_an_interrupted_recreate_leaves_the_previous_index_whole(foldered, tmp_path, monkeypatch, capsys):
    from clip_retrieval.index import qdrant_edge as qe

    out = _copy(foldered[1], tmp_path)
    assert _index(out, "qdrant") == 0
    before = (out / INDEX_CONFIG).read_text(encoding="utf-8")

    def stop():
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        _interrupting(m, 3, stop)
        with pytest.raises(KeyboardInterrupt):
            api.build_index(out, "qdrant", recreate=True)
    assert (out / INDEX_CONFIG).read_text(encoding="utf-8") == before
    assert sorted(p.name for p in (out / qd.LOCAL_FOLDER).iterdir() if not p.name.endswith((".lock", ".owner"))) \
        == [f"{qd.DEFAULT_COLLECTION}.edge"]                  # no half-built copy left beside it
    feats = store.load(out, with_text=False)
    served, exact = open_index(feats), open_index(feats, exact=True)
    assert isinstance(served, qe.EdgeIndex)
    _same_top_k(served, exact, feats.image_matrix(), 10)


@pytest.mark.slow
def test_a_build_killed_mid_load_changes_nothing_searches_see(foldered, tmp_path, capsys):
    out = _copy(foldered[1], tmp_path)
    assert _index(out, "qdrant") == 0
    before = (out / INDEX_CONFIG).read_text(encoding="utf-8")
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, pytest
        from tests.unit.test_index import _interrupting
        from clip_retrieval import api
        mp = pytest.MonkeyPatch()
        _interrupting(mp, 3, lambda: os.kill(os.getpid(), 9))
        api.build_index({str(out)!r}, "qdrant", recreate=True)
        """)], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert (out / INDEX_CONFIG).read_text(encoding="utf-8") == before
    capsys.readouterr()
    assert cli.main(["search", "--features", str(out), "-q", "灰猫", "--no-expand", "--json", "-k", "5"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 5
    assert _index(out, "qdrant", "--recreate") == 0            # the next build clears the killed one's copy
    assert [p.name for p in (out / qd.LOCAL_FOLDER).iterdir() if p.is_dir()] == [f"{qd.DEFAULT_COLLECTION}.edge"]


@pytest.mark.parametrize("damage, says", [
    ("count", "holds 96 points but index.json says 500"),
    ("shard", "does not open"),
    ("replaced", "was replaced by another build"),
])
def test_a_local_index_that_does_not_hold_what_index_json_says_is_refused(foldered, tmp_path, capsys, damage, says):
    from clip_retrieval.index import qdrant_edge as qe

    out = _copy(foldered[1], tmp_path)
    assert _index(out, "qdrant") == 0
    config = json.loads((out / INDEX_CONFIG).read_text(encoding="utf-8"))
    folder = qe.index_folder(out / qd.LOCAL_FOLDER, qd.DEFAULT_COLLECTION)
    if damage == "count":
        config["count"] = 500
        meta = json.loads((folder / qe.META_FILE).read_text(encoding="utf-8"))
        (folder / qe.META_FILE).write_text(json.dumps(dict(meta, count=500)), encoding="utf-8")
        (out / INDEX_CONFIG).write_text(json.dumps(config), encoding="utf-8")
    elif damage == "shard":
        for segment in (folder / qe.SHARD / "segments").iterdir():
            (segment / "segment.json").write_text("{", encoding="utf-8")
    else:
        config["build"] = "0" * 32
        (out / INDEX_CONFIG).write_text(json.dumps(config), encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["search", "--features", str(out), "-q", "灰猫", "--no-expand", "-k", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "--recreate" in err, err
    assert _index(out, "qdrant", "--recreate") == 0
    assert cli.main(["search", "--features", str(out), "-q", "灰猫", "--no-expand", "-k", "3"]) == 0


def test_an_index_made_by_another_edge_version_opens_or_names_the_rebuild(foldered, tmp_path, caplog):
    from clip_retrieval.index import qdrant_edge as qe

    out = _copy(foldered[1], tmp_path)
    api.build_index(out, "qdrant")
    folder = qe.index_folder(out / qd.LOCAL_FOLDER, qd.DEFAULT_COLLECTION)
    meta = json.loads((folder / qe.META_FILE).read_text(encoding="utf-8"))
    (folder / qe.META_FILE).write_text(json.dumps(dict(meta, engine_version="0.8.0")), encoding="utf-8")
    caplog.set_level("INFO")
    assert isinstance(open_index(store.load(out, with_text=False)), qe.EdgeIndex)
    assert any("0.8.0" in r.getMessage() for r in caplog.records)
    for segment in (folder / qe.SHARD / "segments").iterdir():   # a format this version cannot read
        (segment / "version.info").write_text("99.0.0", encoding="utf-8")
    qe._OPEN.clear()
    with pytest.raises(VectorDatabaseError, match=r"made by qdrant-edge-py 0\.8\.0, this is .*--recreate"):
        open_index(store.load(out, with_text=False))


def test_a_second_build_is_refused_naming_the_process_that_holds_it(foldered, tmp_path, capsys):
    from clip_retrieval.index import qdrant_edge as qe

    out = _copy(foldered[1], tmp_path)
    folder = qe.index_folder(out / qd.LOCAL_FOLDER, qd.DEFAULT_COLLECTION)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from clip_retrieval.index.qdrant_edge import BuildLock
        with BuildLock(Path({str(folder)!r})):
            print("held", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _index(out, "qdrant") == 2
        err = capsys.readouterr().err
        assert f"is being built by process {holder.pid} on " in err and len(err.strip().splitlines()) == 1
    finally:
        holder.communicate("")
    assert _index(out, "qdrant") == 0


@pytest.mark.slow
def test_two_builds_at_once_never_corrupt_the_index_and_readers_share_it(foldered, tmp_path):
    out = _copy(foldered[1], tmp_path)
    command = [sys.executable, "-m", "clip_retrieval", "index", "--features", str(out), "--backend", "qdrant",
               "--recreate", "--quiet"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [(r.wait(), r.stderr.read()) for r in runs]
    assert any(code == 0 for code, _ in done), done
    assert all(code == 0 or (code == 2 and "is being built by" in err) for code, err in done), done
    # two readers at once (the page and a CLI search): both open the same finished index
    search = [sys.executable, "-m", "clip_retrieval", "search", "--features", str(out), "-q", "灰猫", "--no-expand",
              "--json", "-k", "5"]
    readers = [subprocess.Popen(search, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [r.communicate() for r in readers]
    assert [r.returncode for r in readers] == [0, 0], outputs
    answers = [[h["image_path"] for h in json.loads(o)["results"]] for o, _ in outputs]
    assert answers[0] == answers[1] and len(answers[0]) == 5


@pytest.mark.parametrize("damage, says", [
    ("truncated", "the index file is damaged or truncated"),
    ("other kind", "holds a flat index of 96 32-d vectors, index.json describes a hnsw index of 96 32-d vectors"),
])
def test_a_damaged_faiss_file_names_the_rebuild(foldered, tmp_path, capsys, damage, says):
    from clip_retrieval.index import faiss as fx

    out = _copy(foldered[1], tmp_path)
    assert _index(out, "faiss", "--kind", "hnsw") == 0
    config = (out / INDEX_CONFIG).read_text(encoding="utf-8")
    if damage == "truncated":
        data = (out / fx.INDEX_FILE).read_bytes()
        (out / fx.INDEX_FILE).write_bytes(data[:len(data) // 2])
    else:                                           # another build's file beside this index.json
        assert _index(out, "faiss", "--kind", "flat") == 0
        (out / INDEX_CONFIG).write_text(config, encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["search", "--features", str(out), "-q", "灰猫", "--no-expand", "-k", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "clipsou index --backend faiss" in err, err
