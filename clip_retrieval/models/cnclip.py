"""The Chinese-CLIP family: ``cn_clip:ARCH`` (ViT-B-16, ViT-L-14, RN50, ...).

Owns turning a Chinese-CLIP name or checkpoint into an ``TorchEncoder``. We load the
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
import urllib.request
from pathlib import Path

import torch

from ..core.errors import InputError
from .tokenizer import trim_padding
from .torch_encoder import TorchEncoder
from .weights import (MODELSCOPE_URL, clip_cache_dir, PROBE_TIMEOUT_S, download_failed, file_fingerprint, hf_endpoint, invalid_checkpoint,
                      reachable, unavailable)

log = logging.getLogger(__name__)


CN_CLIP_HF_ORG = "OFA-Sys"
CN_CLIP_MODELSCOPE_ORG = "AI-ModelScope"
# A plain download address for Chinese-CLIP weights (``BASE/clip_cn_vit-b-16.pt``), e.g. a company mirror or
# the project's Aliyun OSS bucket; when unset the weights come from the Hugging Face endpoint (HF_ENDPOINT).
MIRROR_ENV = "CLIP_RETRIEVAL_CN_CLIP_MIRROR"


def published_at(arch: str) -> list[str]:
    """Every place the weights of ``cn_clip:ARCH`` are published, for the offline message."""
    from cn_clip.clip import utils as cn_utils

    repo, filename = cn_utils._MODELS[arch]
    places = [f"{hf_endpoint()}/{CN_CLIP_HF_ORG}/{repo}/resolve/main/{filename}",
              f"{MODELSCOPE_URL}/{CN_CLIP_MODELSCOPE_ORG}/{repo} ({filename})"]
    if os.environ.get(MIRROR_ENV):
        places.insert(0, f"{os.environ[MIRROR_ENV].rstrip('/')}/{filename}")
    return places


def _download_url(url: str, target: Path) -> None:
    """Stream ``url`` to ``target`` with a progress bar; the file appears only when complete."""
    from tqdm import tqdm

    from ..core.files import write_atomic

    def write(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S * 10) as source, open(tmp, "wb") as out:
            total = int(source.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=None) as bar:
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
            if total is not None and out.tell() != total:
                raise OSError(f"got {out.tell()} of {total} bytes")

    write_atomic(target, write)


def _resolve(arch: str, cache_dir: str | None) -> str:
    """The cached weights file, else a download from the mirror setting or the Hugging Face endpoint."""
    from cn_clip.clip import utils as cn_utils

    if arch not in cn_utils._MODELS:
        raise InputError(f"cn_clip 没有该模型 / cn_clip has no model {arch!r}; known: {', '.join(cn_utils.available_models())}")
    root = clip_cache_dir(cache_dir)
    local = root / cn_utils._MODELS[arch][1]
    if local.is_file():
        return str(local)
    name = f"cn_clip:{arch}"
    mirror = os.environ.get(MIRROR_ENV, "").rstrip("/")
    url = f"{mirror}/{local.name}" if mirror else published_at(arch)[0]
    host = mirror or hf_endpoint()
    if not reachable(host):
        places = published_at(arch)
        raise unavailable(name, [str(local)], host, [url], [p for p in places if p != url])
    try:
        if mirror:
            _download_url(url, local)
            return str(local)
        return cn_utils._download(arch, str(root))
    except Exception as exc:  # network, HTTP and disk errors all end the same way for the user
        raise download_failed(name, url, exc) from exc


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
    except Exception as exc:  # torch raises several types for foreign, pickled or truncated files
        raise invalid_checkpoint(path, exc) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"{path}: 不是 Chinese-CLIP 权重 / a Chinese-CLIP checkpoint is a dict with a 'state_dict' entry")
    state = checkpoint["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if "bert.pooler" not in k}
    if "model_info" in checkpoint:
        model = build_model(checkpoint["model_info"])
        model.load_state_dict(state)
        return model
    if arch not in cn_utils._MODEL_INFO:
        raise InputError(f"cn_clip 没有该模型 / cn_clip has no model {arch!r}; known: {', '.join(cn_utils.available_models())}")
    # cn_clip prints its config to stdout; keep stdout for results.
    with contextlib.redirect_stdout(io.StringIO()) as noise:
        model = cn_utils.create_model(cn_utils._MODEL_INFO[arch]["struct"], {"state_dict": state})
    log.debug(noise.getvalue())
    return model


def load(spec: str, checkpoint: str | None, device: torch.device, cache_dir: str | None = None) -> TorchEncoder:
    """Build a Chinese-CLIP encoder from ``ARCH`` (downloaded or cached) or a local ``.pt`` checkpoint."""
    from cn_clip.clip import image_transform
    from cn_clip.clip import tokenize as cn_tokenize

    arch = spec
    if checkpoint and not Path(checkpoint).is_file():
        raise InputError(f"找不到权重文件 / checkpoint not found: {checkpoint}")
    path = checkpoint or _resolve(arch, cache_dir)
    model = _model_from_checkpoint(arch, path).float().to(device).eval()
    size = int(model.visual.input_resolution)
    context_length = 52

    def encode_tokens(tokens: torch.Tensor) -> torch.Tensor:
        return model.encode_text(trim_padding(tokens))

    return TorchEncoder(
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
