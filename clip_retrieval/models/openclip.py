"""The open_clip family: ``open_clip:ARCH/PRETRAINED`` or ``open_clip:ARCH`` plus a checkpoint.

Owns turning an open_clip name (or a local checkpoint file / folder) into an
``TorchEncoder``. Downloads go through open_clip's own code, but only after the cache has
been checked and the host probed, so an offline machine gets an answer in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..core.errors import InputError
from .tokenizer import trim_padding
from .torch_encoder import TorchEncoder
from .weights import (clip_cache_dir, download_failed, file_fingerprint, hf_endpoint, hf_file_url, hub_offline, invalid_checkpoint,
                      reachable, unavailable)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Text towers whose tokenizer and training text cover Chinese as well as English, recognised by the
# tokenizer the model configuration names (text_cfg hf_tokenizer_name / hf_model_name), never by the model
# name: XLM-RoBERTa, XLM-V (MetaCLIP 2 worldwide), mT5, NLLB, Gemma (SigLIP 2) and SigLIP i18n (mC4).
WORLDWIDE_TOKENIZERS = ("xlm-roberta-*", "facebookai/xlm-roberta-*", "facebook/xlm-v-*", "google/mt5-*",
                        "facebook/nllb-200-*", "timm/vit-*-siglip2*", "timm/vit-*-siglip-i18n*")
# The language code NLLB tokenizers put before the text; without it they mark every text as English.
NLLB_CHINESE = "zho_Hans"


def tokenizer_id(model_cfg: dict) -> str:
    """The Hugging Face tokenizer a config names ('' for open_clip's own BPE tokenizer)."""
    text_cfg = model_cfg.get("text_cfg", {})
    return str(text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name") or "")


def languages_of(model_cfg: dict, declared: list[str] | None = None) -> frozenset[str]:
    """The languages a text tower reads: declared by a checkpoint folder, else from its tokenizer in the config."""
    if declared:
        return frozenset(declared)
    name = tokenizer_id(model_cfg).lower()
    return frozenset({"zh", "en"}) if any(fnmatch(name, p) for p in WORLDWIDE_TOKENIZERS) else frozenset({"en"})


def source_language(model_cfg: dict) -> str | None:
    """The language code the text tokenizer must be given for Chinese queries (NLLB's), else None."""
    return NLLB_CHINESE if fnmatch(tokenizer_id(model_cfg).lower(), "*nllb*") else None


def set_source_language(tokenizer, code: str) -> None:
    """Make an NLLB tokenizer mark texts as ``code``.

    open_clip's ``set_language`` calls ``set_src_lang_special_tokens``, which transformers 5 undoes
    on every call (it re-applies ``src_lang``), so every text would be tagged eng_Latn; setting
    ``src_lang`` itself sticks.
    """
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "src_lang"):
        inner.src_lang = code
    else:
        tokenizer.set_language(code)


def hub_repos(model_cfg: dict) -> list[str]:
    """Hub repositories the text tower reads its config or tokenizer files from when it is built."""
    text_cfg = model_cfg.get("text_cfg", {})
    names = [text_cfg.get("hf_model_name"), text_cfg.get("hf_tokenizer_name")]
    return list(dict.fromkeys(n for n in names if n and not Path(n).exists()))


def _find_tag(arch: str, tag: str, cache_dir: str | None) -> tuple[dict, str | None, list[str], list[str]]:
    """(pretrained cfg, cached weights file or None, places looked, addresses to fetch) for a registry tag."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(arch)
        if arch not in open_clip.list_models():
            raise InputError(f"open_clip 没有该结构 / open_clip has no architecture {arch!r}; see open_clip.list_models().")
        raise InputError(f"open_clip:{arch} 没有该预训练标签 / has no pretrained tag {tag!r}; known tags: {', '.join(tags)}")
    looked: list[str] = []
    fetch: list[str] = []
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = _hf_weights(cfg)
        for candidate in _weights_candidates(filename):
            hit = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            looked.append(f"{cache_dir or hf_constants.HF_HUB_CACHE} ({repo_id}/{candidate})")
            if isinstance(hit, str):
                return cfg, hit, looked, fetch
        first, *others = [hf_file_url(repo_id, c) for c in _weights_candidates(filename)]
        fetch.append(first + "".join(f" (or {o})" for o in others))
    url = cfg.get("url", "")
    if url:
        local = clip_cache_dir(cache_dir) / os.path.basename(url)
        looked.append(str(local))
        if local.is_file():
            return cfg, str(local), looked, fetch
        if not hf_hub:
            fetch.append(url)
    return cfg, None, looked, fetch


def _hf_weights(cfg: dict) -> tuple[str, str]:
    """(repository, file) of a tag's hub weights: 'org/name/' means open_clip's default file name."""
    from open_clip import pretrained as oc_pretrained

    repo_id, filename = os.path.split(cfg["hf_hub"])
    return repo_id, filename or oc_pretrained.HF_WEIGHTS_NAME


def _weights_candidates(filename: str) -> list[str]:
    """The files open_clip tries for a tag, in its order (the safetensors twin first)."""
    from open_clip import pretrained as oc_pretrained

    return [*oc_pretrained._get_safe_alternatives(filename), filename]


def _download_tag(name: str, cfg: dict, fetch: list[str], cache_dir: str | None) -> str:
    """Download a tag's weights as open_clip does (hub first, safetensors twin first), after the host answered.

    A missing safetensors twin moves on to the next file; any other failure is reported with the way out.
    """
    from open_clip import pretrained as oc_pretrained

    try:
        if cfg.get("hf_hub"):
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            repo_id, filename = _hf_weights(cfg)
            candidates = _weights_candidates(filename)
            for candidate in candidates:
                try:
                    return hf_hub_download(repo_id, candidate, cache_dir=cache_dir, library_name="open_clip")
                except EntryNotFoundError:
                    if candidate == candidates[-1]:
                        raise
        return oc_pretrained.download_pretrained_from_url(cfg["url"], cache_dir=cache_dir)
    except Exception as exc:  # network, HTTP and disk errors all end the same way for the user
        raise download_failed(name, fetch[0] if fetch else cfg.get("url", ""), exc) from exc


def _build_with_hub(name: str, model_cfg: dict, build: Callable[[], T]) -> T:
    """Run ``build`` from the cache alone when it can; reach the hub only for files the cache lacks.

    Text towers built on Hugging Face models read config and tokenizer files at build time. With
    everything cached this never touches the network (no 10 s timeouts offline); otherwise the
    endpoint is probed first so an unreachable hub gives the offline message in seconds.
    """
    repos = hub_repos(model_cfg)
    if not repos:
        return build()
    try:
        with hub_offline():
            return build()
    except OSError as exc:
        log.info("%s: text tower files not all cached (%s); asking the hub", name, exc)
    endpoint = hf_endpoint()
    files = [f"{endpoint}/{repo} (config.json, tokenizer files)" for repo in repos]
    if not reachable(endpoint):
        from huggingface_hub import constants as hf_constants

        raise unavailable(name, [hf_constants.HF_HUB_CACHE], endpoint, files)
    try:
        return build()
    except OSError as exc:
        raise download_failed(name, "; ".join(files), exc) from exc


def text_forward(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The text tower of a causal open_clip model over tokens of any width (padding already trimmed).

    The one copy of the forward pass: the torch encoder runs it, and the ONNX export traces it
    (``onnx._text_module``), so the two runtimes cannot drift apart.
    """
    from open_clip.transformer import text_global_pool

    width = tokens.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:width].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:width, :width])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection if model.text_projection is not None else x


def text_encoder_fn(model: torch.nn.Module):
    """A token encoder that trims padding when the text tower is causal and pools at EOT."""
    from open_clip.model import CLIP

    trimmable = (isinstance(model, CLIP) and getattr(model, "attn_mask", None) is not None
                 and model.text_pool_type in ("argmax", "eos"))
    if not trimmable:
        return lambda tokens: model.encode_text(tokens)
    return lambda tokens: text_forward(model, trim_padding(tokens))


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
    scripted = weights is not None and is_torchscript(weights)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = open_clip.create_model(arch, pretrained=None if scripted else weights, device=device,
                                           weights_only=True, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                                           force_preprocess_cfg=preprocess_cfg)
        if scripted:  # every parameter must be there; computed buffers the archive also carries are left out
            expected = model.state_dict()
            model.load_state_dict({k: v for k, v in torchscript_state(weights).items() if k in expected})
    except Exception as exc:   # torch, zip and safetensors each raise their own types for a file that does not load
        if weights is None or isinstance(exc, OSError) or "state_dict" in str(exc):
            raise   # not a broken file: a text tower's hub files (OSError, asked for again), other weights, a bug
        raise invalid_checkpoint(weights, exc) from exc
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return model, preprocess


def is_torchscript(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive, the format OpenAI publishes CLIP in (``~/.cache/clip/ViT-B-32.pt``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def torchscript_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights of an OpenAI TorchScript archive, in open_clip's names (OpenAI's own).

    ``torch.load(weights_only=True)`` refuses TorchScript archives; ``torch.jit.load`` reads them
    with TorchScript's restricted loader, which runs no Python pickle code.
    """
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    return {k: v.float() for k, v in state.items()}


def load(spec: str, checkpoint: str | None, device: torch.device, cache_dir: str | None = None) -> TorchEncoder:
    """Build an open_clip encoder from ``ARCH/TAG``, ``ARCH`` + checkpoint file, or a local-dir folder."""
    import open_clip

    arch, _, tag = spec.partition("/")
    name = f"open_clip:{spec}" if tag else f"open_clip:{arch}"
    declared: list[str] | None = None
    tag_cfg: dict = {}
    if checkpoint and Path(checkpoint).is_dir():
        config_path = Path(checkpoint) / "open_clip_config.json"
        if not config_path.is_file():
            raise InputError(f"{checkpoint}: 缺少 open_clip_config.json / a checkpoint folder needs open_clip_config.json "
                             f"beside its weights.")
        folder_cfg = json.loads(config_path.read_text(encoding="utf-8"))
        declared, model_cfg = folder_cfg.get("languages"), folder_cfg["model_cfg"]
        model_name, weights = f"local-dir:{checkpoint}", checkpoint
    elif checkpoint:
        if not Path(checkpoint).is_file():
            raise InputError(f"找不到权重文件 / checkpoint not found: {checkpoint}")
        model_name, weights = arch, checkpoint
        tag_cfg = tag_config(arch, tag)
    elif tag:
        tag_cfg, weights, looked, fetch = _find_tag(arch, tag, cache_dir)
        if weights is None:
            probe = hf_endpoint() if tag_cfg.get("hf_hub") else fetch[0]
            if not reachable(probe):
                raise unavailable(name, looked, probe, fetch)
            weights = _download_tag(name, tag_cfg, fetch, cache_dir)
        model_name = arch
    else:
        raise InputError(f"open_clip:{arch} 未指明权重 / names no weights: use open_clip:{arch}/TAG or pass --checkpoint PATH.")
    if not model_name.startswith("local-dir:"):
        if arch not in open_clip.list_models():
            raise InputError(f"open_clip 没有该结构 / open_clip has no architecture {arch!r}; see open_clip.list_models().")
        model_cfg = open_clip.get_model_config(arch) or {}

    def build():
        if model_name.startswith("local-dir:"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, device=device,
                                                                             weights_only=True)
        else:
            model, preprocess = create(arch, weights, tag_cfg, device)
        tokenizer = open_clip.get_tokenizer(model_name)
        if source_language(model_cfg):
            set_source_language(tokenizer, source_language(model_cfg))
        return model, preprocess, tokenizer

    model, preprocess, tokenizer = _build_with_hub(name, model_cfg, build)
    return wrap(model, preprocess, tokenizer, name, file_fingerprint(weights),
                languages_of(model_cfg, declared), device, model_cfg.get("embed_dim"))


def wrap(model: torch.nn.Module, preprocess, tokenizer, name: str, fingerprint: str, languages: frozenset[str],
         device: torch.device, dim: int | None = None) -> TorchEncoder:
    """An ``TorchEncoder`` around an open_clip model and its own tokenizer and transform."""
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    if dim is None:
        with torch.inference_mode():
            dim = model.encode_text(tokenizer(["a"]).to(device)).shape[-1]
    return TorchEncoder(
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


def random_encoder(arch: str = "ViT-B-32", seed: int = 0, device: str = "cpu") -> TorchEncoder:
    """A built-in architecture with seeded random weights: same cost as the pretrained one (benchmarks)."""
    import open_clip

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, device=device)
    from .torch_encoder import state_dict_fingerprint

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

    from ..core.files import write_atomic

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
        raise InputError(f"未知的模型结构 / unknown architecture {name!r}: use one of {known} or a path to an open_clip model_cfg JSON")
    return json.loads(path.read_text(encoding="utf-8"))
