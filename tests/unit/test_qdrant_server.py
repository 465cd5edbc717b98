"""The Qdrant backend against a real server: runs when ``QDRANT_URL`` is set, skipped otherwise.

Start one with ``docker run -p 6333:6333 qdrant/qdrant`` and run
``QDRANT_URL=http://localhost:6333 pytest tests/unit/test_qdrant_server.py`` (``QDRANT_API_KEY`` too if the
server wants one). Each test uses its own collection and drops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import replace

import pytest

from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.core.errors import ModelMismatchError
from clip_retrieval.index import Where, open_index
from clip_retrieval.index import qdrant as qd

URL = os.environ.get("QDRANT_URL")
pytestmark = pytest.mark.skipif(not URL, reason="QDRANT_URL is not set: no Qdrant server to test against")


@pytest.fixture
def collection():
    name = f"clip_retrieval_test_{uuid.uuid4().hex[:8]}"
    yield name
    client = qd.connect(url=URL)
    if client.collection_exists(name):
        client.delete_collection(name)


@pytest.fixture
def features(tiny_features, tmp_path):
    out = tmp_path / "f"
    shutil.copytree(tiny_features, out)
    return out


def test_server_returns_the_exact_top_k_and_indexes_the_filtered_fields(features, collection):
    config = api.build_index(features, "qdrant", url=URL, collection=collection, hnsw_ef=256)
    assert config["url"] == URL and config["path"] is None and config["api_key_env"] == qd.API_KEY_ENV
    feats = store.load(features, with_text=False)
    served, exact = open_index(feats), open_index(feats, exact=True)
    assert served.name == "qdrant"
    queries = feats.image_matrix()
    assert (served.search(queries, 5)[0] == exact.search(queries, 5)[0]).all()
    info = qd.connect(url=URL).get_collection(collection)
    assert {"path", "captions", "sha256"} <= set(info.payload_schema)
    assert info.config.metadata["model"] == feats.model


def test_server_filters_match_the_exact_scan(features, collection):
    api.build_index(features, "qdrant", url=URL, collection=collection)
    feats = store.load(features, with_text=False)
    served, exact = open_index(feats), open_index(feats, exact=True)
    query = feats.image_matrix()[:3]
    for where in (Where("images"), Where(caption_contains="猫"), Where("images", "雪"), Where("elsewhere")):
        assert (served.search(query, 8, where)[0] == exact.search(query, 8, where)[0]).all(), where


def test_server_sync_is_idempotent_and_refuses_another_model(features, collection, tmp_path):
    first = api.build_index(features, "qdrant", url=URL, collection=collection, shards=2, replicas=1)
    assert first["written"] == first["count"]
    again = api.build_index(features, "qdrant", url=URL, collection=collection)
    assert again["written"] == again["deleted"] == 0
    feats = store.load(features)
    other = tmp_path / "other"
    store.save(other, feats.image_features, feats.text_features,
               replace(feats.manifest, model=replace(feats.manifest.model, name="open_clip:other")))
    with pytest.raises(ModelMismatchError, match="open_clip:other"):
        api.build_index(other, "qdrant", url=URL, collection=collection)


def test_an_index_moves_local_to_server_and_back_by_re_indexing_the_features(features, collection):
    """The documented move: the features are the source of truth, so each direction is one ``index`` run."""
    local = api.build_index(features, "qdrant")
    assert local["engine"] == "qdrant-edge"
    feats = store.load(features, with_text=False)
    queries = feats.image_matrix()[:4]
    local_rows = open_index(feats).search(queries, 5)[0]
    server = api.build_index(features, "qdrant", url=URL, collection=collection)
    assert server["url"] == URL and server["written"] == server["count"]
    assert (open_index(feats).search(queries, 5)[0] == local_rows).all()
    back = api.build_index(features, "qdrant")              # the local index was kept: nothing to write
    assert back["engine"] == "qdrant-edge" and back["written"] == 0
    assert (open_index(feats).search(queries, 5)[0] == local_rows).all()
