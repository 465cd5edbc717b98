"""Encoder registry: one model string picks a family, as open_clip's factory does.

Model strings: ``open_clip:ARCH/PRETRAINED`` (default ``open_clip:ViT-B-32/openai``),
``open_clip:ARCH`` with a checkpoint, ``cn_clip:ARCH``, and ``demo`` / ``demo-en`` (the small
offline models shipped inside the package; ``demo-en`` reads English only). Families and documented names are data in
``catalog``: adding a family is adding an entry there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, ModelUnavailableError
from .catalog import BUNDLED, DEFAULT_MODEL, DEMO_EN_MODEL, DEMO_MODEL, FAMILIES, model_name_help
if TYPE_CHECKING:  # torch loads only when a model does, so `--help` and argument errors stay instant
    import torch

    from .base import Encoder

log = logging.getLogger(__name__)

def _load_bundled(name: str, checkpoint: str | None, device: torch.device) -> Encoder:
    """One of the small models shipped in the package (``catalog.BUNDLED``), or a checkpoint of it."""
    folder = checkpoint or str(BUNDLED[name])
    if not (Path(folder) / "open_clip_config.json").is_file():
        raise ModelUnavailableError(
            f"内置演示模型缺失：{folder} / the bundled model {name} is missing at {folder}; "
            f"reinstall clip_retrieval or rebuild it with `python -m scripts.build_demo_model --model {name}`.")
    from . import openclip
    encoder = openclip.load(name, folder, device)
    encoder.name = name
    return encoder


def _load_demo(spec: str, checkpoint: str | None, device: torch.device) -> Encoder:
    return _load_bundled(DEMO_MODEL, checkpoint, device)


def _load_demo_en(spec: str, checkpoint: str | None, device: torch.device) -> Encoder:
    return _load_bundled(DEMO_EN_MODEL, checkpoint, device)


def parse_model_name(name: str) -> tuple[str, str]:
    """Split ``family:spec``; a bare ``demo`` or ``demo-en`` is its own family."""
    name = name.strip()
    family, sep, spec = name.partition(":")
    if not sep and family in BUNDLED:
        return family, ""
    if not sep or family not in FAMILIES or (family not in BUNDLED and not spec):
        raise InputError(
            f"未知模型 / unknown model {name!r}: use {model_name_help()} (e.g. {DEFAULT_MODEL}); "
            f"`clip-retrieval models` lists the documented names")
    return family, spec


def select_device(requested: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless told; asking for a device that is absent is an input error."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("没有可用的 CUDA 设备 / --device cuda asked for, but no CUDA device is available; use --device cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS 不可用 / --device mps asked for, but MPS is not available; use --device cpu")
    if requested not in ("cpu", "cuda", "mps"):
        raise InputError(f"未知设备 / unknown device {requested!r}: use auto, cpu, cuda or mps")
    return torch.device(requested)


def load_encoder(name: str = DEFAULT_MODEL, checkpoint: str | None = None, device: str = "auto") -> Encoder:
    """Load the encoder a model string names, from cache, download, or a local checkpoint."""
    family, spec = parse_model_name(name)
    if checkpoint is not None and not Path(checkpoint).exists():
        raise InputError(f"找不到权重文件 / checkpoint not found: {checkpoint}")
    dev = select_device(device)
    log.info("loading %s on %s", name, dev)
    return FAMILIES[family].load(spec, checkpoint, dev)


def __getattr__(name: str):
    if name == "Encoder":
        from .base import Encoder
        return Encoder
    raise AttributeError(name)


__all__ = ["Encoder", "load_encoder", "parse_model_name", "select_device", "DEFAULT_MODEL", "DEMO_MODEL",
           "DEMO_EN_MODEL", "BUNDLED", "FAMILIES"]
