"""JPEG draft decoding and ``extract --exact-decode``, through the real extraction path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.cli import main
from clip_retrieval.collection.dataset import ImageFiles
from clip_retrieval.models import load_encoder

N = 3


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Noisy 320x240 JPEGs: big enough for draft mode to decode them at 1/4 scale for a 32-pixel model."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    rows = ["image_path,caption"]
    for i in range(N):
        base = np.zeros((240, 320, 3), np.float64)
        base[..., i % 3] = np.linspace(0, 255, 320)[None, :]
        noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"p{i}.jpg", quality=90)
        rows.append(f"p{i}.jpg,照片{i}")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _plain(encoder, folder, n=N):
    """What an upstream pipeline does: PIL decodes every pixel, then the model's own transform."""
    return torch.stack([encoder.preprocess(Image.open(folder / f"p{i}.jpg").convert("RGB")) for i in range(n)])


def _extract(folder, tiny, out, *extra):
    # no rules file: the expansion cache is another test's concern and costs seconds here
    return main(["extract", "--csv", str(folder / "captions.csv"), "--model", "open_clip:tiny", "--checkpoint",
                 str(tiny), "--out", str(out), "--num-workers", "0", "--device", "cpu", "--quiet",
                 "--rules", str(folder / "no_rules.yaml"), *extra])


def test_exact_decode_gives_the_pixels_and_vectors_of_a_plain_pil_decode(photos, tiny_open_clip, tmp_path):
    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), device="cpu")
    want_pixels = _plain(encoder, photos)
    exact = ImageFiles([photos / f"p{i}.jpg" for i in range(N)], encoder.preprocess, None)
    assert all(torch.equal(exact[i][1], want_pixels[i]) for i in range(N))

    assert _extract(photos, tiny_open_clip, tmp_path / "exact", "--exact-decode") == 0
    assert _extract(photos, tiny_open_clip, tmp_path / "draft") == 0
    want = encoder.encode_images(want_pixels)
    exact_store, draft_store = store.load(tmp_path / "exact"), store.load(tmp_path / "draft")
    assert exact_store.manifest.image_decode == "exact" and draft_store.manifest.image_decode == "draft"
    assert np.allclose(exact_store.image_features, want.numpy(), atol=1e-6)
    # the draft path really is different, so the comparison above can fail
    assert float(np.abs(draft_store.image_features - want.numpy()).max()) > 1e-4
    cosines = (draft_store.image_features * want.numpy()).sum(-1)
    assert float(cosines.min()) > 0.9


def test_update_in_the_other_decode_mode_reencodes_every_image(photos, tiny_open_clip, tmp_path):
    out = tmp_path / "out"
    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), device="cpu")
    api.extract_features(csv=photos / "captions.csv", encoder=encoder, out=out, num_workers=0, quiet=True,
                         rules=None)
    result = api.extract_features(csv=photos / "captions.csv", encoder=encoder, out=out, num_workers=0, quiet=True,
                                  update=True, exact_decode=True, rules=None)
    assert result.encoded_images == N and result.reused_images == 0
    manifest = json.loads((out / store.MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["image_decode"] == "exact"
    assert np.allclose(store.load(out).image_features, encoder.encode_images(_plain(encoder, photos)).numpy(), atol=1e-6)


@pytest.mark.parametrize("mode", ["exact", "draft"])
def test_an_image_query_is_decoded_the_way_its_features_were(photos, tiny_open_clip, tmp_path, mode):
    out = tmp_path / mode
    assert _extract(photos, tiny_open_clip, out, *(["--exact-decode"] if mode == "exact" else [])) == 0
    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), device="cpu")
    searcher = api.open_searcher(out, encoder=encoder, rules=None, exact=True)
    vector, _ = searcher.image_vector(photos / "p1.jpg")
    # the collection's own photo as the query gives its stored vector back, not a draft/exact neighbour of it
    assert np.allclose(vector, searcher.store.image_features[1], atol=1e-6)
