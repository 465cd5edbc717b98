"""The one owner of opening a model: a model string, weights and a device in, an ``Encoder`` out.

Owns the device policy (``placement``) and the runtime choice: on a CPU the exported ONNX
model (exported once per weights fingerprint, ``onnx``), on CUDA/MPS, for training and for
models the ONNX path cannot run, the torch encoder of the family the catalogue names.
Model strings: ``open_clip:ARCH/PRETRAINED`` (default ``open_clip:ViT-B-32/openai``),
``open_clip:ARCH`` with a checkpoint, ``cn_clip:ARCH``, and ``demo`` / ``demo-en`` (the small
offline models shipped inside the package). Families and documented names are data in
``catalog``: adding a family is adding an entry there, never a branch here.

The policy guesses cheaply first (no torch import on a machine without an accelerator);
when the guess says "accelerator" but torch has none it can use (a CPU-only torch beside
NVIDIA driver tools, a driver mismatch, an Intel Mac), the ONNX path is taken and
``--verbose`` says why.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import InputError, ModelUnavailableError
from .catalog import BUNDLED, DEFAULT_MODEL, DEMO_EN_MODEL, DEMO_MODEL, FAMILIES, model_name_help

if TYPE_CHECKING:  # torch loads only when a model does, so `--help` and argument errors stay instant
    import torch

    from .encoder import Encoder
    from .torch_encoder import TorchEncoder

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
ONNX, TORCH = "onnxruntime", "torch"


@dataclass(frozen=True)
class Placement:
    """Where a model runs: the runtime, the device, and why (logged at --verbose)."""

    runtime: str
    device: str
    why: str


def _accelerator_hint() -> str | None:
    """A cheap guess, without importing torch, that torch might drive an accelerator here."""
    if sys.platform == "darwin":
        return "an Apple machine (MPS)"
    if Path("/proc/driver/nvidia/version").exists():
        return "an NVIDIA driver (/proc/driver/nvidia/version)"
    if shutil.which("nvidia-smi"):
        return "NVIDIA driver tools (nvidia-smi)"
    return None


def _torch_accelerator() -> str | None:
    """The accelerator torch can really use: cuda, then mps; None when it has none."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


def _check_device(requested: str) -> None:
    if requested not in DEVICES:
        raise InputError(f"未知设备 / unknown device {requested!r}: use auto, cpu, cuda or mps")


def placement(requested: str = "auto", runtime: str = "auto") -> Placement:
    """The one device policy: which runtime and device a model opened with ``--device requested`` gets.

    ``runtime="torch"`` (training, export, tests of the torch path) or ``CLIP_RETRIEVAL_RUNTIME=torch``
    keeps torch on the device ``requested`` resolves to. Otherwise ``cpu`` is ONNX Runtime,
    ``cuda``/``mps`` are torch (refused when torch has no such device), and ``auto`` is torch only
    when torch really has an accelerator.
    """
    _check_device(requested)
    if runtime == TORCH or os.environ.get("CLIP_RETRIEVAL_RUNTIME") == TORCH:
        return Placement(TORCH, select_device(requested).type, "the torch runtime was asked for")
    if requested == "cpu":
        return Placement(ONNX, "cpu", "--device cpu")
    if requested != "auto":
        return Placement(TORCH, select_device(requested).type, f"--device {requested}")
    hint = _accelerator_hint()
    if hint is None:
        return Placement(ONNX, "cpu", "no accelerator on this machine")
    found = _torch_accelerator()
    if found is None:
        return Placement(ONNX, "cpu", f"{hint} found, but torch cannot use an accelerator here "
                                      "(a CPU-only torch build, or a driver torch does not match)")
    return Placement(TORCH, found, f"torch has {found}")


def select_device(requested: str = "auto") -> torch.device:
    """The torch device: cuda, then mps, then cpu, unless told; asking for an absent one is an input error."""
    import torch

    _check_device(requested)
    if requested == "auto":
        return torch.device(_torch_accelerator() or "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("没有可用的 CUDA 设备 / --device cuda asked for, but no CUDA device is available; use --device cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise InputError("MPS 不可用 / --device mps asked for, but MPS is not available; use --device cpu")
    return torch.device(requested)


def parse_model_name(name: str) -> tuple[str, str]:
    """Split ``family:spec``; a bare ``demo`` or ``demo-en`` is its own family."""
    name = name.strip()
    family, sep, spec = name.partition(":")
    if not sep and family in BUNDLED:
        return family, ""
    if not sep or family not in FAMILIES or (family not in BUNDLED and not spec):
        raise InputError(
            f"未知模型 / unknown model {name!r}: use {model_name_help()} (e.g. {DEFAULT_MODEL}); "
            f"`clipsou models` lists the documented names")
    return family, spec


def open_encoder(name: str = DEFAULT_MODEL, checkpoint: str | None = None, device: str = "auto",
                 fingerprint: str | None = None, runtime: str = "auto") -> Encoder:
    """The encoder a command should use for these weights on this device.

    On a CPU it is the exported ONNX model (exported the first time; ``fingerprint``, from a
    features manifest, finds the export without looking at the weights); on an accelerator,
    with ``runtime="torch"``, and for models the ONNX path cannot run, the torch encoder.
    """
    family, spec = parse_model_name(name)
    if checkpoint is not None and not Path(checkpoint).exists():
        raise InputError(f"找不到权重文件 / checkpoint not found: {checkpoint}")
    where = placement(device, runtime)
    log.info("%s: %s on %s (%s)", name, where.runtime, where.device, where.why)
    if where.runtime == TORCH:
        return _torch(family, spec, name, checkpoint, where.device)
    from . import onnx

    known = fingerprint or onnx.weights_fingerprint(name, checkpoint)
    exported = onnx.open_exported(known, name) if known else None
    if exported is not None:
        return exported
    encoder = _torch(family, spec, name, checkpoint, "cpu")
    reason = onnx.unsupported_reason(encoder)
    if reason:
        log.info("%s runs on torch: %s", name, reason)
        return encoder
    return onnx.export_once(encoder, name, checkpoint)


def load_encoder(name: str = DEFAULT_MODEL, checkpoint: str | None = None, device: str = "auto") -> TorchEncoder:
    """The torch encoder (training, export, CUDA): ``open_encoder(..., runtime="torch")``."""
    return open_encoder(name, checkpoint, device, runtime=TORCH)


def is_exported(fingerprint: str) -> bool:
    """Whether these weights have an ONNX export already (opening them is then cheap)."""
    from .onnx import read_card

    return read_card(fingerprint) is not None


def _torch(family: str, spec: str, name: str, checkpoint: str | None, device: str) -> TorchEncoder:
    if checkpoint is None:   # weights surely absent and unreachable: say so before the seconds torch takes
        from .weights import preflight

        preflight(name)
    import torch

    return FAMILIES[family].load(spec, checkpoint, torch.device(device))


def _load_bundled(name: str, checkpoint: str | None, device: torch.device) -> TorchEncoder:
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


def _load_demo(spec: str, checkpoint: str | None, device: torch.device) -> TorchEncoder:
    return _load_bundled(DEMO_MODEL, checkpoint, device)


def _load_demo_en(spec: str, checkpoint: str | None, device: torch.device) -> TorchEncoder:
    return _load_bundled(DEMO_EN_MODEL, checkpoint, device)
