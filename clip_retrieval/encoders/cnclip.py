"""The Chinese-CLIP family: ``cn_clip:ARCH`` (ViT-B-16, ViT-L-14, RN50, ...).

Owns turning a Chinese-CLIP name or checkpoint into an ``Encoder``. We load the
checkpoint ourselves with ``weights_only=True`` (cn_clip's ``load_from_name`` does not)
and build the model with cn_clip's own ``create_model``. A checkpoint may carry its own
``model_info`` (the architecture as a dict), which is how fine-tuned and small models
travel without a config file inside the cn_clip package.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import torch

from ..errors import InputError
from .base import Encoder, trim_padding
from .weights import HF_HOST, file_fingerprint, host_reachable, unavailable

log = logging.getLogger(__name__)


def _resolve(arch: str, cache_dir: str | None) -> str:
    from cn_clip.clip import utils as cn_utils

    if arch not in cn_utils._MODELS:
        raise InputError(f"cn_clip has no model {arch!r}; known: {', '.join(cn_utils.available_models())}")
    root = cache_dir or os.path.expanduser("~/.cache/clip")
    local = Path(root) / cn_utils._MODELS[arch][1]
    if local.is_file():
        return str(local)
    if not host_reachable(HF_HOST):
        raise unavailable(f"cn_clip:{arch}", [str(local)], HF_HOST)
    return cn_utils._download(arch, root)


def build_model(model_info: dict) -> torch.nn.Module:
    """A Chinese-CLIP model from an architecture dict (cn_clip's ``CLIP`` keyword arguments)."""
    from cn_clip.clip.model import CLIP

    info = dict(model_info)
    if isinstance(info.get("vision_layers"), str):
        info["vision_layers"] = [int(v) for v in info["vision_layers"].strip("[]").split(",")]
    return CLIP(**info)


def _model_from_checkpoint(arch: str, path: str) -> torch.nn.Module:
    from cn_clip.clip import utils as cn_utils

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or pickled files
        raise InputError(f"{path}: not a Chinese-CLIP checkpoint loadable with weights_only=True ({exc})") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"{path}: a Chinese-CLIP checkpoint is a dict with a 'state_dict' entry")
    state = checkpoint["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if "bert.pooler" not in k}
    if "model_info" in checkpoint:
        model = build_model(checkpoint["model_info"])
        model.load_state_dict(state)
        return model
    if arch not in cn_utils._MODEL_INFO:
        raise InputError(f"cn_clip has no model {arch!r}; known: {', '.join(cn_utils.available_models())}")
    # cn_clip prints its config to stdout; keep stdout for results.
    with contextlib.redirect_stdout(io.StringIO()) as noise:
        model = cn_utils.create_model(cn_utils._MODEL_INFO[arch]["struct"], {"state_dict": state})
    log.debug(noise.getvalue())
    return model


def load(spec: str, checkpoint: str | None, device: torch.device, cache_dir: str | None = None) -> Encoder:
    """Build a Chinese-CLIP encoder from ``ARCH`` (downloaded or cached) or a local ``.pt`` checkpoint."""
    from cn_clip.clip import image_transform
    from cn_clip.clip import tokenize as cn_tokenize

    arch = spec
    if checkpoint and not Path(checkpoint).is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    path = checkpoint or _resolve(arch, cache_dir)
    model = _model_from_checkpoint(arch, path).float().to(device).eval()
    size = int(model.visual.input_resolution)
    context_length = 52

    def encode_tokens(tokens: torch.Tensor) -> torch.Tensor:
        return model.encode_text(trim_padding(tokens))

    return Encoder(
        name=f"cn_clip:{arch}",
        fingerprint=file_fingerprint(path),
        dim=int(model.text_projection.shape[1]),
        languages=frozenset({"zh"}),
        preprocess=image_transform(size),
        device=device,
        image_size=size,
        logit_scale=float(model.logit_scale.detach().exp()),
        context_length=context_length,
        model=model,
        _tokenize=lambda texts: cn_tokenize(texts, context_length=context_length),
        _encode_image=lambda pixels: model.encode_image(pixels),
        _encode_tokens=encode_tokens,
        autocast=device.type == "cuda",
    )
