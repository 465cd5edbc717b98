"""One model-identity policy: features are only searched or updated with the weights that built them.

Real tiny open_clip models with different seeded weights; the CLI runs in-process.
"""

from __future__ import annotations

import shutil

import pytest

from clip_retrieval import api, cli
from clip_retrieval.features import store
from clip_retrieval.core.errors import ModelMismatchError
from clip_retrieval.search import Searcher

from tests.conftest import ROOT, TINY_OPEN_CLIP

RULES = ROOT / "rules" / "expansions.yaml"


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """The same tiny architecture with other weights (another seed)."""
    from clip_retrieval.models.openclip import build_model, save_checkpoint_dir

    folder = tmp_path_factory.mktemp("other_weights")
    return save_checkpoint_dir(build_model(TINY_OPEN_CLIP, seed=5), TINY_OPEN_CLIP, folder, languages=["zh", "en"])


def _refusal(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_search_with_other_weights_is_refused_naming_both(tiny_features, other_weights, capsys):
    feats = store.load(tiny_features, with_text=False)
    err = _refusal(capsys, ["search", "--features", str(tiny_features), "--query", "金毛", "--rules", str(RULES),
                            "--checkpoint", str(other_weights), "--device", "cpu"])
    assert feats.model_fingerprint in err and "open_clip:tiny" in err
    assert f"extract --csv {feats.manifest.source['csv']} --model open_clip:tiny --checkpoint {other_weights}" in err


def test_refused_even_when_the_expansion_cache_could_answer(tiny_features, other_weights):
    with pytest.raises(ModelMismatchError, match="weights"):
        api.open_searcher(tiny_features, rules=RULES, checkpoint=str(other_weights), device="cpu")


def test_evaluation_with_other_weights_is_refused(tiny_features, other_weights):
    from clip_retrieval.models import load_encoder

    other = load_encoder("open_clip:tiny", str(other_weights), device="cpu")
    with pytest.raises(ModelMismatchError, match=other.fingerprint):
        Searcher(store.load(tiny_features), other, None)
    with pytest.raises(ModelMismatchError):
        api.evaluate(tiny_features, rules=None, encoder=other)


def test_any_name_with_other_weights_is_refused_for_update_and_search(small_collection, tiny_open_clip,
                                                                        other_weights, tmp_path, capsys):
    out = tmp_path / "f"
    base = ["--csv", str(small_collection), "--out", str(out), "--num-workers", "0", "--device", "cpu", "--quiet",
            "--rules", str(RULES)]
    assert cli.main(["extract", "--model", "open_clip:anything", "--checkpoint", str(tiny_open_clip), *base]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = _refusal(capsys, ["extract", "--update", "--model", "open_clip:anything", "--checkpoint",
                            str(other_weights), *base])
    assert "open_clip:anything" in err and f"--csv {small_collection}" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _refusal(capsys, ["search", "--features", str(out), "--query", "金毛", "--model", "open_clip:anything",
                      "--checkpoint", str(other_weights), "--device", "cpu", "--rules", str(RULES)])
    # the weights that built them are accepted under their own name
    assert cli.main(["search", "--features", str(out), "--query", "金毛", "--model", "open_clip:anything",
                     "--checkpoint", str(tiny_open_clip), "--device", "cpu", "--rules", str(RULES)]) == 0


def test_rebuild_hint_repeats_an_images_source(tiny_open_clip, small_collection, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(small_collection.parent, photos)
    out = tmp_path / "f"
    api.extract_features(images=photos, model="open_clip:tiny", checkpoint=str(tiny_open_clip), out=out,
                         num_workers=0, device="cpu", quiet=True, rules=None)
    with pytest.raises(ModelMismatchError, match=f"extract --images {photos} --model demo --out {out}"):
        api.open_searcher(out, model="demo", rules=None, device="cpu")
