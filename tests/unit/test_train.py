"""Training: validation Recall@1 rises well above chance; checkpoints load for search; resume continues."""

from __future__ import annotations

import json

import pytest
import torch

from clip_retrieval import api
from clip_retrieval.collection.generated import make_collection
from clip_retrieval.core.errors import InputError
from clip_retrieval.train import train

from tests.conftest import TINY_OPEN_CLIP


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "tiny.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("train"), per_pair=8, seed=11, size=64, english=True,
                           varied=False)


@pytest.mark.slow
def test_training_lifts_recall_far_above_chance_and_checkpoint_loads(train_csv, tiny_arch, tmp_path):
    torch.set_num_threads(2)
    result = train(train_csv, tmp_path / "run", arch="demo-small", epochs=8, batch_size=64, lr=1e-3,
                   val_fraction=0.2, seed=0, quiet=True)
    recalls = [h["val_recall@1"] for h in result.history]
    chance = result.history[0]["val_chance@1"]
    n_val = 51  # 20% of 256 images
    assert 0 < chance < 3 / n_val * 2  # each caption names one of 32 subject/scene pairs
    assert recalls[-1] > recalls[0] and max(recalls) > 0.5 and max(recalls) > 8 * chance
    assert (result.best / "open_clip_config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "run").glob("epoch_*")) == [f"epoch_{i:03d}" for i in range(1, 9)]
    out = tmp_path / "feats"
    api.extract_features(csv=train_csv, model="open_clip:demo-small", checkpoint=str(result.best), out=out,
                         num_workers=0, device="cpu", quiet=True)
    searcher = api.open_searcher(out, rules=None, device="cpu")
    assert searcher.encoder.fingerprint == searcher.store.model_fingerprint


def test_resume_continues_from_the_saved_epoch(small_collection, tiny_arch, tmp_path):
    first = train(small_collection, tmp_path, arch=str(tiny_arch), epochs=1, batch_size=16, seed=0, quiet=True)
    resumed = train(small_collection, tmp_path, arch=str(tiny_arch), epochs=2, batch_size=16, seed=0, quiet=True,
                    resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]


def test_bad_arguments(small_collection, tiny_arch, tmp_path):
    with pytest.raises(InputError, match="exactly one"):
        train(small_collection, tmp_path, quiet=True)
    with pytest.raises(InputError, match="no train_state.pt"):
        train(small_collection, tmp_path / "empty", arch=str(tiny_arch), resume=True, quiet=True)
    with pytest.raises(InputError, match="unknown architecture"):
        train(small_collection, tmp_path, arch="no-such-arch", quiet=True)


@pytest.mark.slow
def test_cli_fine_tunes_the_demo_model_and_the_result_searches(train_csv, tmp_path, cli):
    proc = cli("train", "--csv", str(train_csv), "--model", "demo", "--out", str(tmp_path / "ft"),
               "--epochs", "1", "--batch-size", "32", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "best validation Recall@1" in proc.stdout
    best = tmp_path / "ft" / "best"
    proc = cli("extract", "--csv", str(train_csv), "--model", "open_clip:finetuned",
               "--checkpoint", str(best), "--out", str(tmp_path / "feats"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    proc = cli("search", "--features", str(tmp_path / "feats"), "--query", "雪地里的哈士奇",
               "--top-k", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert all("husky_snow" in r["image_path"] for r in json.loads(proc.stdout)["results"])


@pytest.mark.slow
def test_training_is_reproducible_from_its_seed(train_csv, tmp_path):
    """What makes the demo model rebuildable: same data, same seed, same weights."""
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    runs = [train(train_csv, tmp_path / name, arch="demo-small", epochs=1, batch_size=64, seed=3, quiet=True)
            for name in ("a", "b")]
    a, b = (load_file(str(r.out / "epoch_001" / "open_clip_model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].history == runs[1].history
