"""Zero-shot classification: which of a few labels a picture shows, from text alone.

Owns parsing a label list, turning labels into class vectors (each label's expansions
in the languages the model reads, each phrasing in every prompt template of the rules
file, pooled with ``search.pool_each`` like a query) and the probabilities over labels
from the model's logit scale. Choosing the model is the caller's job (``api``).
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

import numpy as np

from .collection.dataset import open_user_image
from .core.errors import InputError, UserError
from .query.expansion import Expansion, Phrase, RuleTable
from .search import pool_each

if TYPE_CHECKING:
    from .models import Encoder


def parse_labels(labels: str | list[str]) -> list[str]:
    """``猫,狗,鸟`` (ASCII or full-width commas) into distinct non-empty labels."""
    items = labels.replace("，", ",").split(",") if isinstance(labels, str) else labels
    out = list(dict.fromkeys(x.strip() for x in items if x.strip()))
    if len(out) < 2:
        raise InputError(f"--labels 至少需要两个标签 / --labels needs at least two labels separated by commas, got {labels!r}")
    return out


def label_vectors(encoder: Encoder, labels: list[str], rules: RuleTable | None) -> np.ndarray:
    """One vector per label: its expansions in the encoder's languages, each in every prompt template, pooled."""
    prompts: list[str] = []
    weights: list[list[float]] = []
    for label in labels:
        expansion = rules.expand(label, encoder.languages) if rules else Expansion(label, [Phrase(label, "zh")])
        group = []
        for phrase in expansion.pooled:
            for prompt in (rules.prompts(phrase.text, phrase.lang) if rules else [phrase.text]):
                prompts.append(prompt)
                group.append(phrase.weight)
        weights.append(group)
    return pool_each(encoder.encode_texts(prompts), weights)


def classify_images(images: list[str | os.PathLike], labels: list[str], encoder: Encoder,
                    rules: RuleTable | None) -> list[dict]:
    """Probabilities over ``labels`` for each image file: ``{"image", "probabilities": {label: p}}``.

    One unreadable image does not sink the rest: its entry is ``{"image", "error": reason}``.
    """
    classes = label_vectors(encoder, labels, rules)
    out = []
    for path in images:
        try:
            img, _ = open_user_image(path, encoder.image_size)
        except UserError as exc:
            out.append({"image": str(path), "error": str(exc)})
            continue
        vec = np.asarray(encoder.encode_images(encoder.preprocess(img)[None])[0], dtype=np.float32)
        logits = encoder.logit_scale * (classes @ vec)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        out.append({"image": str(path), "probabilities": {n: round(float(p), 6) for n, p in zip(labels, probs)}})
    return out
