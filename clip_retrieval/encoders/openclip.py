"""The open_clip family: ``open_clip:ARCH/PRETRAINED`` or ``open_clip:ARCH`` plus a checkpoint.

Owns turning an open_clip name (or a local checkpoint file / folder) into an
``Encoder``. Downloads go through open_clip's own code, but only after the cache has
been checked and the host probed, so an offline machine gets an answer in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch

from ..errors import InputError
from .base import Encoder, trim_padding
from .weights import HF_HOST, file_fingerprint, host_reachable, unavailable, url_host

log = logging.getLogger(__name__)

# English-trained towers read English; the multilingual text towers read Chinese too.
MULTILINGUAL_MARKERS = ("xlm", "multilingual", "mt5", "nllb")


def _resolve_tag(arch: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """Return (weights file, pretrained cfg) for a registry tag, downloading only when a host answers."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(arch)
        if arch not in open_clip.list_models():
            raise InputError(f"open_clip has no architecture {arch!r}; see open_clip.list_models().")
        raise InputError(f"open_clip:{arch} has no pretrained tag {tag!r}; known tags: {', '.join(tags)}")
    looked, host = [], HF_HOST
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or oc_pretrained.HF_WEIGHTS_NAME
        for candidate in [*oc_pretrained._get_safe_alternatives(filename), filename]:
            hit = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            looked.append(f"{cache_dir or hf_constants.HF_HUB_CACHE} ({repo_id}/{candidate})")
            if isinstance(hit, str):
                return hit, cfg
    url = cfg.get("url", "")
    if url:
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        looked.append(str(local))
        if local.is_file():
            return str(local), cfg
        if not hf_hub:
            host = url_host(url)
    if not host_reachable(host):
        raise unavailable(f"open_clip:{arch}/{tag}", looked, host)
    return oc_pretrained.download_pretrained(cfg, cache_dir=cache_dir), cfg


def _languages(model_cfg: dict, declared: list[str] | None) -> frozenset[str]:
    if declared:
        return frozenset(declared)
    text_name = json.dumps(model_cfg.get("text_cfg", {})).lower()
    return frozenset({"zh", "en"}) if any(m in text_name for m in MULTILINGUAL_MARKERS) else frozenset({"en"})


def text_encoder_fn(model: torch.nn.Module):
    """A token encoder that trims padding when the text tower is causal and pools at EOT."""
    from open_clip.model import CLIP
    from open_clip.transformer import text_global_pool

    trimmable = (isinstance(model, CLIP) and getattr(model, "attn_mask", None) is not None
                 and model.text_pool_type in ("argmax", "eos"))
    if not trimmable:
        return lambda tokens: model.encode_text(tokens)

    def encode(tokens: torch.Tensor) -> torch.Tensor:
        tokens = trim_padding(tokens)
        width = tokens.shape[1]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:width].to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask[:width, :width])
        x = model.ln_final(x)
        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        if isinstance(model.text_projection, torch.nn.Linear):
            return model.text_projection(x)
        return x @ model.text_projection if model.text_projection is not None else x

    return encode


def tag_config(arch: str, tag: str) -> dict:
    """open_clip's pretrained cfg for ``ARCH/TAG`` (empty when the name has no tag or open_clip does not know it)."""
    from open_clip import pretrained as oc_pretrained

    return dict(oc_pretrained.get_pretrained_cfg(arch, tag)) if tag else {}


def create(arch: str, weights: str | None, tag_cfg: dict, device: torch.device | str = "cpu"):
    """Model and eval transform for ``arch`` with ``weights``, built as open_clip builds ``arch`` + its tag.

    open_clip only applies a tag's QuickGELU flag and preprocessing when it downloads the tag
    itself; we hand it a resolved file, so we apply them here. One name then gives one
    architecture whether the file came from the hub, a mirror or ``--checkpoint``.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    preprocess_cfg = merge_preprocess_dict({}, tag_cfg)
    preprocess_cfg.pop("size", None)  # open_clip sizes the transform from the built tower, as for a tag
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = open_clip.create_model(arch, pretrained=weights, device=device, weights_only=True,
                                       force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                                       force_preprocess_cfg=preprocess_cfg)
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return model, preprocess


def load(spec: str, checkpoint: str | None, device: torch.device, cache_dir: str | None = None) -> Encoder:
    """Build an open_clip encoder from ``ARCH/TAG``, ``ARCH`` + checkpoint file, or a local-dir folder."""
    import open_clip

    arch, _, tag = spec.partition("/")
    declared: list[str] | None = None
    tag_cfg: dict = {}
    if checkpoint and Path(checkpoint).is_dir():
        config_path = Path(checkpoint) / "open_clip_config.json"
        if not config_path.is_file():
            raise InputError(f"{checkpoint}: a checkpoint folder needs open_clip_config.json beside its weights.")
        declared = json.loads(config_path.read_text(encoding="utf-8")).get("languages")
        model_name, weights = f"local-dir:{checkpoint}", checkpoint
    elif checkpoint:
        if not Path(checkpoint).is_file():
            raise InputError(f"checkpoint not found: {checkpoint}")
        model_name, weights = arch, checkpoint
        tag_cfg = tag_config(arch, tag)
    elif tag:
        weights, tag_cfg = _resolve_tag(arch, tag, cache_dir)
        model_name = arch
    else:
        raise InputError(f"open_clip:{arch} names no weights: use open_clip:{arch}/TAG or pass --checkpoint PATH.")
    if model_name.startswith("local-dir:"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, device=device, weights_only=True)
        model_cfg = json.loads((Path(checkpoint) / "open_clip_config.json").read_text(encoding="utf-8"))["model_cfg"]
    else:
        if arch not in open_clip.list_models():
            raise InputError(f"open_clip has no architecture {arch!r}; see open_clip.list_models().")
        model, preprocess = create(arch, weights, tag_cfg, device)
        model_cfg = open_clip.get_model_config(arch) or {}
    tokenizer = open_clip.get_tokenizer(model_name)
    name = f"open_clip:{spec}" if tag else f"open_clip:{arch}"
    return wrap(model, preprocess, tokenizer, name, file_fingerprint(weights),
                _languages(model_cfg, declared), device, model_cfg.get("embed_dim"))


def wrap(model: torch.nn.Module, preprocess, tokenizer, name: str, fingerprint: str, languages: frozenset[str],
         device: torch.device, dim: int | None = None) -> Encoder:
    """An ``Encoder`` around an open_clip model and its own tokenizer and transform."""
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    if dim is None:
        with torch.inference_mode():
            dim = model.encode_text(tokenizer(["a"]).to(device)).shape[-1]
    return Encoder(
        name=name,
        fingerprint=fingerprint,
        dim=int(dim),
        languages=languages,
        preprocess=preprocess,
        device=device,
        image_size=size,
        logit_scale=float(model.logit_scale.detach().exp()),
        context_length=int(getattr(tokenizer, "context_length", 77)),
        model=model,
        _tokenize=tokenizer,
        _encode_image=lambda pixels: model.encode_image(pixels),
        _encode_tokens=text_encoder_fn(model),
        autocast=device.type == "cuda",
    )


def random_encoder(arch: str = "ViT-B-32", seed: int = 0, device: str = "cpu") -> Encoder:
    """A built-in architecture with seeded random weights: same cost as the pretrained one (benchmarks)."""
    import open_clip

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device)
    from .base import state_dict_fingerprint

    return wrap(model, preprocess, open_clip.get_tokenizer(arch), f"open_clip:{arch}/random-{seed}",
                state_dict_fingerprint(model), frozenset({"en"}), torch.device(device))


def build_model(model_cfg: dict, seed: int | None = None) -> torch.nn.Module:
    """An open_clip CLIP from a config dict (random weights; ``seed`` makes them reproducible)."""
    from open_clip.model import CLIP

    if seed is not None:
        torch.manual_seed(seed)
    return CLIP(**model_cfg)


def save_checkpoint_dir(model: torch.nn.Module, model_cfg: dict, folder: str | os.PathLike,
                        languages: list[str] | None = None, preprocess_cfg: dict | None = None) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors``: a folder ``--checkpoint`` loads."""
    from safetensors.torch import save_file

    from ..store import write_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    if languages:
        config["languages"] = languages
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(folder / "open_clip_model.safetensors", lambda tmp: save_file(state, str(tmp)))
    write_atomic(folder / "open_clip_config.json",
                 lambda tmp: tmp.write_text(json.dumps(config, indent=1, ensure_ascii=False), encoding="utf-8"))
    return folder


ARCH_DIR = Path(__file__).resolve().parent / "archs"


def arch_config(name: str) -> dict:
    """A small architecture by name (``encoders/archs/NAME.json``) or a path to such a JSON file."""
    path = Path(name)
    if not path.is_file():
        path = ARCH_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ARCH_DIR.glob("*.json")))
        raise InputError(f"unknown architecture {name!r}: use one of {known} or a path to an open_clip model_cfg JSON")
    return json.loads(path.read_text(encoding="utf-8"))
