"""Zero-shot probabilities: the model's own temperature (``logit_scale``), through the exported (ONNX) encoder."""

from __future__ import annotations

import numpy as np

from clip_retrieval import zeroshot
from clip_retrieval.models import load_encoder, onnx, open_encoder
from clip_retrieval.query.expansion import load_rules

from tests.conftest import ROOT

LABELS = ["金毛", "灰猫", "红色汽车"]


def test_probabilities_use_the_exported_logit_scale(tiny_open_clip, small_collection):
    torch_enc = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    lean = open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    assert isinstance(lean, onnx.OnnxEncoder)
    # the exported card carries the checkpoint's exp(logit_scale), not a default
    assert abs(lean.logit_scale - torch_enc.logit_scale) < 1e-4 and abs(lean.logit_scale - 1.0) > 1.0
    rules = load_rules(ROOT / "rules" / "expansions.yaml")
    images = sorted((small_collection.parent / "images").glob("*.png"))[:3]
    got = zeroshot.classify_images(images, LABELS, lean, rules)
    classes = np.asarray(zeroshot.label_vectors(lean, LABELS, rules), dtype=np.float64)
    for entry, path in zip(got, images):
        img, _ = zeroshot.open_user_image(path, lean.image_size)
        vec = np.asarray(lean.encode_images(lean.preprocess(img)[None])[0], dtype=np.float64)
        logits = torch_enc.logit_scale * (classes @ vec)
        want = np.exp(logits - logits.max())
        want /= want.sum()
        assert np.allclose([entry["probabilities"][n] for n in LABELS], want, atol=2e-6), entry
