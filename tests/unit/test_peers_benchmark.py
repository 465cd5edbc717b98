"""benchmarks.peers names every peer it could not run or measure, with the reason, instead of leaving it out."""

from __future__ import annotations

import sys

from benchmarks import peers


def test_a_python_without_the_peer_is_named_with_the_reason(monkeypatch):
    for env in ("RCLIP_PYTHON", "RCLIP3_PYTHON", "CLIP_RETRIEVAL_PYTHON"):
        monkeypatch.delenv(env, raising=False)
    python, why = peers.find_peer("rclip", sys.executable)
    assert python is None and f"{sys.executable} does not import rclip" in why
    python, why = peers.find_peer("clip_retrieval", sys.executable)   # our own clip_retrieval is not theirs
    assert python is None and "clip-retrieval" in why


def test_a_figure_a_peer_has_no_command_for_is_kept_with_its_reason_and_a_failure_ends_only_that_peer(tmp_path):
    notes = []
    peer = peers.PeerRun("clip_retrieval", peers.ClipRetrieval(sys.executable, tmp_path), "2.45.0", {}, notes.append)
    assert peer.measure("query_table", lambda: peer.tool.query(tmp_path, tmp_path, "金毛")) is None
    assert peer.not_measured == {"query_table": peers.NO_QUERY} and peer.failed is None

    def broken():
        raise RuntimeError("clip-retrieval inference failed (1):\nTraceback ...\nImportError: no torchvision")

    assert peer.measure("index_small", broken) is None
    assert peer.failed == "failed while measuring index_small: ImportError: no torchvision"
    assert peer.measure("update", lambda: {"wall_s": 1.0}) is None           # not run again after a failure
    assert peer.not_measured["update"] == peer.failed and len(notes) == 1
