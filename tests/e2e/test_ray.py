"""extract --engine ray on real Ray clusters: a node lost mid-run, a Ctrl-C then a rerun, --update.

Each cluster here is a ``ray.cluster_utils.Cluster`` of 1-CPU nodes on this machine (separate raylets,
object stores and worker processes: Ray's own way to test several nodes on one machine). The encoder is
the tiny open_clip model of the suite, run through ONNX Runtime as the local engine runs it, and every
result is compared with a local extraction of the same collection.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.core import ptfile
from clip_retrieval.features.shards import JOURNAL_DIR
from tests.conftest import ROOT

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.slow
# a lost node is noticed within about a second, not the default half minute
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200,
                "health_check_failure_threshold": 3}


PHOTOS = 96


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """96 noisy 1024x768 JPEGs, each with its own coloured box, and one broken file among them (row 21).

    Decoded in full (``--exact-decode``) they take a few seconds on two 1-CPU nodes, long enough for a
    test to catch a run in the middle, where the tiny model alone would finish before the second
    node's worker has started.
    """
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("ray_photos")
    (root / "images").mkdir()
    base = Image.effect_noise((1024, 768), 50).convert("RGB")
    rows = ["image_path,caption"]
    for i in range(PHOTOS):
        img = base.copy()
        ImageDraw.Draw(img).rectangle([(i * 37) % 800, (i * 53) % 600, (i * 37) % 800 + 200, (i * 53) % 600 + 150],
                                      fill=((i * 40) % 256, (i * 90) % 256, (i * 20) % 256))
        img.save(root / "images" / f"p{i:03d}.jpg", quality=85)
        rows.append(f"images/p{i:03d}.jpg,第{i}张照片")
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 but nothing else")
    rows.insert(20, "images/broken.jpg,坏图")
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "captions.csv"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, photos, tiny_open_clip) -> store.FeatureStore:
    """What the local engine saves for the collection."""
    out = tmp_path_factory.mktemp("ray_reference")
    api.extract_features(csv=photos, model="open_clip:tiny", checkpoint=str(tiny_open_clip), out=out, num_workers=0,
                         device="cpu", quiet=True, rules=None, exact_decode=True)
    return store.load(out)


def _assert_same_features(folder: Path, want: store.FeatureStore) -> None:
    got = store.load(folder)
    assert [e["path"] for e in got.manifest.images] == [e["path"] for e in want.manifest.images]
    assert [e["sha256"] for e in got.manifest.images] == [e["sha256"] for e in want.manifest.images]
    assert got.manifest.captions == want.manifest.captions
    assert got.manifest.skipped == want.manifest.skipped
    np.testing.assert_allclose(got.image_features, want.image_features, atol=1e-6)
    np.testing.assert_allclose(got.caption_features(), want.caption_features(), atol=1e-6)
    assert not (folder / JOURNAL_DIR).exists()


def _extract(photos: Path, checkpoint: Path, out: Path, *extra: str) -> subprocess.Popen:
    """``clipsou extract --engine ray`` as a user starts it: its own process, its own driver."""
    args = [sys.executable, "-m", "clip_retrieval", "extract", "--csv", str(photos), "--model", "open_clip:tiny",
            "--checkpoint", str(checkpoint), "--out", str(out), "--engine", "ray", "--num-workers", "0",
            "--device", "cpu", "--exact-decode", "--rules", str(ROOT / "rules" / "expansions.yaml"), *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _records(out: Path) -> dict[str, str]:
    """Finished shards on disk so far: file name -> the node that wrote it."""
    found = {}
    for path in (out / JOURNAL_DIR).glob("shard-*.pt"):
        try:
            found[path.name] = json.loads(ptfile.read(path)["record"])["node"]
        except (OSError, ValueError, KeyError):
            continue
    return found


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"extract ended (exit {proc.returncode}) before the moment the test waits for:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the run to reach that moment")
        time.sleep(0.02)


@pytest.fixture
def cluster():
    """A head node and one worker node, one CPU each; the worker node is the one a test may remove."""
    c = cluster_utils.Cluster(initialize_head=True,
                              head_node_args={"num_cpus": 1, "_system_config": FAST_FAILURE})
    worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c, worker
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def test_a_node_lost_mid_run_leaves_a_complete_result_equal_to_the_local_engine(
        cluster, photos, tiny_open_clip, reference, tmp_path):
    c, worker = cluster
    out = tmp_path / "out"
    proc = _extract(photos, tiny_open_clip, out, "--ray-address", c.address, "--workers", "2", "--shard-size", "2")
    worker_node = worker.node_id[:12]
    # as soon as the worker node has finished a shard it is busy with the next: take the node away then
    _wait_for(lambda: any(worker_node in node for node in _records(out).values()), proc)
    before = _records(out)
    c.remove_node(worker)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert len(before) < 49, "the run had finished before the node was removed"
    assert any(worker_node in node for node in before.values())
    assert "1 skipped" in stdout and "shards: 49, 0 resumed" in stdout
    assert "broken.jpg (line 21): not a readable image" in stderr
    _assert_same_features(out, reference)


def test_update_through_ray_encodes_only_what_changed_and_equals_the_local_update(
        cluster, photos, tiny_open_clip, reference, tmp_path):
    c, _ = cluster
    root = tmp_path / "coll"
    shutil.copytree(photos.parent, root)
    local, remote = tmp_path / "local", tmp_path / "remote"
    common = dict(csv=root / "captions.csv", model="open_clip:tiny", checkpoint=str(tiny_open_clip), num_workers=0,
                  device="cpu", quiet=True, rules=None, exact_decode=True)
    api.extract_features(out=local, **common)
    shutil.copytree(local, remote)
    from PIL import Image

    Image.new("RGB", (80, 60), (200, 30, 30)).save(root / "images" / "red.png")
    Image.new("RGB", (80, 60), (30, 30, 200)).save(root / "images" / "p005.jpg")   # changed content
    with open(root / "captions.csv", "a", encoding="utf-8") as fh:
        fh.write("images/red.png,一块红色\n")
    want = api.extract_features(out=local, update=True, **common)
    got = api.extract_features(out=remote, update=True, engine="ray", ray_address=c.address, workers=2,
                               shard_size=1, **common)
    assert got.encoded_images == want.encoded_images == 2
    assert got.reused_images == want.reused_images == len(reference.manifest.images) - 1
    assert got.shards == {"planned": 3, "resumed": 0}   # the new, the changed and the broken file tried again
    _assert_same_features(remote, store.load(local))


def test_ctrl_c_then_a_rerun_encodes_only_the_missing_shards(photos, tiny_open_clip, reference, tmp_path):
    out = tmp_path / "out"
    first = _extract(photos, tiny_open_clip, out, "--workers", "1", "--shard-size", "3")   # a local Ray instance
    _wait_for(lambda: len(_records(out)) >= 3, first)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr
    assert "interrupted / 已中断" in stderr
    assert not (out / store.MANIFEST_FILE).exists() and not (out / store.IMAGE_FILE).exists()
    done = _records(out)
    assert 3 <= len(done) < 33
    rerun = _extract(photos, tiny_open_clip, out, "--workers", "1", "--shard-size", "3")
    stdout, stderr = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, stderr
    assert f"shards: 33, {len(done)} resumed" in stdout
    _assert_same_features(out, reference)
