"""The model catalogue: families and the model names we support, as data.

Owns what a user can ask for and what we know about it before anything is loaded:
each family's help text and loader, each named model's languages, embedding size,
parameter count, download location and the published Chinese retrieval figures with
their sources. Error messages, ``--model`` help, ``clipsou models`` and ``train``
read it, as open_clip's callers read ``pretrained.py``. Adding a model is adding an entry.

It must not import torch or a model library: ``--help`` and ``models`` stay instant.
Figures are copied from their sources (see ``SOURCES``); where a source gives no figure
the entry says ``None`` ("unknown"), never a guess.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .torch_encoder import TorchEncoder

DEFAULT_MODEL = "open_clip:ViT-B-32/openai"
DEMO_MODEL = "demo"
DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_EN_MODEL = "demo-en"
BUNDLED = {DEMO_MODEL: DEMO_DIR, DEMO_EN_MODEL: DEMO_DIR.with_name(DEMO_EN_MODEL)}

# Where each published figure comes from; entries cite these keys.
SOURCES: dict[str, str] = {
    "cn_clip_results": "OFA-Sys/Chinese-CLIP Results.md (zero-shot text-to-image R@1)",
    "open_clip_xm3600": "mlfoundations/open_clip docs/openclip_multilingual_retrieval_results.csv "
                        "(Crossmodal-3600 zh, image_retrieval_recall@1 = text-to-image R@1)",
    "open_clip_profile": "mlfoundations/open_clip docs/model_profile.csv (mparams)",
    "cn_clip_model_card": "OFA-Sys/Chinese-CLIP README model card (#Params (All))",
    "counted": "counted: open_clip.create_model(ARCH, device='meta') or the bundled safetensors file "
               "(tests/unit/test_catalog.py recounts)",
}


@dataclass(frozen=True)
class Figure:
    """One published zero-shot Chinese text-to-image R@1, in percent."""

    benchmark: str
    r_at_1: float
    source: str

    def to_json(self) -> dict:
        return {"benchmark": self.benchmark, "r@1": self.r_at_1, "source": SOURCES[self.source]}


@dataclass(frozen=True)
class Family:
    """A model family: how its names look, what loads them, what they read by default."""

    name: str
    pattern: str
    example: str
    help_zh: str
    help_en: str
    loader: str  # "module:function" taking (spec, checkpoint, device); imported only when a model loads
    languages: str  # how the family's encoders decide the languages they read
    trainable: bool = False

    def load(self, spec: str, checkpoint: str | None, device: torch.device) -> TorchEncoder:
        """Import the family's module only now, so listing and parsing names never loads torch."""
        module, _, func = self.loader.partition(":")
        return getattr(importlib.import_module(module), func)(spec, checkpoint, device)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("open_clip", "open_clip:ARCH/PRETRAINED", DEFAULT_MODEL,
           "open_clip 的任一预训练权重（open_clip.list_pretrained()），或 open_clip:ARCH 加 --checkpoint 本地权重",
           "any open_clip pretrained name (open_clip.list_pretrained()), or open_clip:ARCH with --checkpoint",
           "clip_retrieval.models.openclip:load",
           "from the text tower in the model config: multilingual towers (XLM-R, NLLB, SigLIP 2, MetaCLIP 2 "
           "worldwide) read zh and en, CLIP's own BPE tower reads en; a checkpoint folder may declare 'languages'",
           trainable=True),
    Family("cn_clip", "cn_clip:ARCH", "cn_clip:ViT-B-16",
           "Chinese-CLIP（OFA-Sys），读中文", "Chinese-CLIP (OFA-Sys), reads Chinese",
           "clip_retrieval.models.cnclip:load", "zh (Chinese RoBERTa text towers)"),
    Family(DEMO_MODEL, DEMO_MODEL, DEMO_MODEL,
           "内置离线演示小模型（无需下载）", "the small offline demo model shipped in the package (no download)",
           "clip_retrieval.models.factory:_load_demo", "the 'languages' list in its open_clip_config.json",
           trainable=True),
    Family(DEMO_EN_MODEL, DEMO_EN_MODEL, DEMO_EN_MODEL,
           "内置离线演示小模型，只读英文（中文查询靠扩展表与词典）",
           "the small offline demo model that reads English only (Chinese reaches it through the table and dictionary)",
           "clip_retrieval.models.factory:_load_demo_en", "the 'languages' list in its open_clip_config.json",
           trainable=True),
)}


@dataclass(frozen=True)
class ModelEntry:
    """One model name we document, with what is published about it.

    ``params_m`` is from ``params_source``; ``download_bytes`` is the exact size where we
    know it (``None``: unknown). ``tokenizer_language`` is the code the text tokenizer needs
    for Chinese (NLLB's ``zho_Hans``), ``None`` where the tokenizer takes no language.
    """

    name: str
    languages: tuple[str, ...]
    embed_dim: int
    params_m: float | None
    params_source: str | None
    download: str
    zh_retrieval: tuple[Figure, ...] = ()
    tokenizer_language: str | None = None
    download_bytes: int | None = None
    mirror: str | None = None
    note: str = ""

    @property
    def family(self) -> str:
        return self.name.partition(":")[0] if ":" in self.name else self.name

    @property
    def spec(self) -> str:
        return self.name.partition(":")[2]

    @property
    def estimated_download_mb(self) -> float | None:
        """Four bytes per parameter (float32); a file stored in float16 is half this."""
        return None if self.params_m is None else round(self.params_m * 4.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "default": self.name == DEFAULT_MODEL,
            "languages": list(self.languages),
            "tokenizer_language": self.tokenizer_language,
            "embed_dim": self.embed_dim,
            "params_millions": self.params_m,
            "params_source": SOURCES[self.params_source] if self.params_source else None,
            "download": self.download,
            "mirror": self.mirror,
            "download_bytes": self.download_bytes,
            "estimated_download_mb": self.estimated_download_mb,
            "zh_text_to_image_r@1": [f.to_json() for f in self.zh_retrieval],
            "note": self.note,
        }


def _xm(value: float) -> tuple[Figure, ...]:
    return (Figure("Crossmodal-3600 zh", value, "open_clip_xm3600"),)


def _cn(muge: float, flickr: float, coco: float) -> tuple[Figure, ...]:
    return (Figure("MUGE", muge, "cn_clip_results"), Figure("Flickr30K-CN", flickr, "cn_clip_results"),
            Figure("COCO-CN", coco, "cn_clip_results"))


_CN_HOST = "https://clip-cn-beijing.oss-cn-beijing.aliyuncs.com/checkpoints/"


def _cn_clip(arch: str, repo: str, file: str, dim: int, params: float, figures: tuple[Figure, ...]) -> ModelEntry:
    return ModelEntry(f"cn_clip:{arch}", ("zh",), dim, params, "cn_clip_model_card", f"hf:OFA-Sys/{repo}/{file}",
                      figures, mirror=f"modelscope:AI-ModelScope/{repo}/{file} ; {_CN_HOST}{file}")


MODELS: dict[str, ModelEntry] = {m.name: m for m in (
    ModelEntry(DEFAULT_MODEL, ("en",), 512, 151.28, "open_clip_profile",
               "hf:timm/vit_base_patch32_clip_224.openai", _xm(0.4),
               mirror="https://openaipublic.azureedge.net/clip/models/"
                      "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
               note="the original CLIP ViT-B/32; English only"),
    ModelEntry("open_clip:ViT-B-32/laion2b_s34b_b79k", ("en",), 512, 151.28, "open_clip_profile",
               "hf:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", _xm(0.7), note="English only"),
    ModelEntry("open_clip:xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k", ("zh", "en"), 512, 366.12,
               "open_clip_profile", "hf:laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k", _xm(53.7),
               note="text tower and tokenizer from hf:xlm-roberta-base"),
    ModelEntry("open_clip:xlm-roberta-large-ViT-H-14/frozen_laion5b_s13b_b90k", ("zh", "en"), 1024, 1193.01,
               "open_clip_profile", "hf:laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k",
               _xm(59.1), note="text tower and tokenizer from hf:xlm-roberta-large"),
    ModelEntry("open_clip:ViT-B-16-SigLIP2/webli", ("zh", "en"), 768, 375.19, "counted", "hf:timm/ViT-B-16-SigLIP2",
               note="multilingual Gemma tokenizer; no Chinese figure in open_clip's table"),
    ModelEntry("open_clip:nllb-clip-base-siglip/mrl", ("zh", "en"), 768, 507.47, "open_clip_profile",
               "hf:visheratin/nllb-siglip-mrl-base", _xm(53.5), tokenizer_language="zho_Hans",
               note="tokenizer from hf:facebook/nllb-200-distilled-600M"),
    ModelEntry("open_clip:nllb-clip-large-siglip/mrl", ("zh", "en"), 1152, 1195.5, "open_clip_profile",
               "hf:visheratin/nllb-siglip-mrl-large", _xm(59.5), tokenizer_language="zho_Hans",
               note="tokenizer from hf:facebook/nllb-200-distilled-1.3B"),
    _cn_clip("RN50", "chinese-clip-rn50", "clip_cn_rn50.pt", 1024, 77, _cn(42.6, 48.8, 48.1)),
    _cn_clip("ViT-B-16", "chinese-clip-vit-base-patch16", "clip_cn_vit-b-16.pt", 512, 188, _cn(52.1, 62.7, 62.2)),
    _cn_clip("ViT-L-14", "chinese-clip-vit-large-patch14", "clip_cn_vit-l-14.pt", 768, 406, _cn(56.3, 68.0, 64.0)),
    _cn_clip("ViT-L-14-336", "chinese-clip-vit-large-patch14-336px", "clip_cn_vit-l-14-336.pt", 768, 407,
             _cn(59.0, 69.0, 64.7)),
    _cn_clip("ViT-H-14", "chinese-clip-vit-huge-patch14", "clip_cn_vit-h-14.pt", 1024, 958, _cn(63.0, 71.2, 69.2)),
    ModelEntry(DEMO_MODEL, ("zh", "en"), 64, 4.21, "counted", "bundled: clip_retrieval/models/demo (no download)",
               note="trained on generated pictures: for trying the tool offline, not for real photos"),
    ModelEntry(DEMO_EN_MODEL, ("en",), 64, 4.21, "counted", "bundled: clip_retrieval/models/demo-en (no download)",
               note="demo's architecture trained on English captions only: how Chinese queries fare on an "
                    "English-only model (clipsou eval --benchmark demo-en)"),
)}


def entry(name: str) -> ModelEntry | None:
    """The catalogue entry for a full model name, ``None`` for names we do not document."""
    return MODELS.get(name.strip())


def languages_for(name: str) -> frozenset[str] | None:
    """Languages the catalogue declares for a model name (``None``: read them from the model's config)."""
    found = entry(name)
    return frozenset(found.languages) if found else None


def model_name_help() -> str:
    """The accepted model-name shapes, for ``--model`` help and unknown-name errors."""
    return ", ".join(f.pattern for f in FAMILIES.values())


def families_help() -> str:
    """One line per family: pattern, example and what it is (Chinese and English)."""
    return "\n".join(f"  {f.pattern:<28} {f.help_zh} / {f.help_en} (e.g. {f.example})" for f in FAMILIES.values())


def trainable_families() -> list[str]:
    return [f.name for f in FAMILIES.values() if f.trainable]


def demo_download_bytes(name: str = DEMO_MODEL) -> int | None:
    """A bundled model's size on disk (it ships in the package, so it is known exactly)."""
    files = [p for p in BUNDLED[name].glob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) if files else None


def catalogue() -> list[dict[str, Any]]:
    """Every documented model as JSON-ready dicts (the default first), for ``clipsou models --json``."""
    rows = []
    for m in MODELS.values():
        row = m.to_json()
        if m.name in BUNDLED:
            row["download_bytes"] = demo_download_bytes(m.name)
        rows.append(row)
    rows.sort(key=lambda r: not r["default"])
    return rows


__all__ = ["DEFAULT_MODEL", "DEMO_MODEL", "DEMO_DIR", "DEMO_EN_MODEL", "BUNDLED", "FAMILIES", "MODELS", "SOURCES",
           "Family", "Figure",
           "ModelEntry", "catalogue", "entry", "families_help", "languages_for", "model_name_help",
           "trainable_families"]
