"""Optional capabilities: which extra installs which library, and the one message when one is missing.

Owns the table from an optional library's import name to the extra of ours that installs it
(``faiss`` -> ``ann``, ``gradio`` -> ``web``, ...), ``require`` (import it or refuse with the
install command, exit 2), ``missing_extra`` (the same message for a ``ModuleNotFoundError``
raised deeper down, which the CLI turns into that line instead of "unexpected error"), and
the hint for a torch/torchvision pair that do not match. It must not import any of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import InputError

DISTRIBUTION = "clipsou"
# import name -> (extra, what it is for)
EXTRAS = {
    "faiss": ("ann", "the faiss index backend and large dedup runs"),
    "gradio": ("web", "the web page (serve)"),
    "gradio_client": ("web", "the web page (serve)"),
    "qdrant_client": ("qdrant", "the qdrant index backend"),
    "qdrant_edge": ("qdrant", "the local qdrant index (Qdrant Edge)"),
    "transformers": ("multilingual", "XLM-R / NLLB / SigLIP 2 text towers"),
    "ray": ("ray", "extract --engine ray"),
    "pi_heif": ("heic", "HEIC/HEIF photos"),
    "rawpy": ("raw", "camera RAW files"),
    "watchdog": ("watch", "filesystem events for clipsou watch"),
    "rapidocr_onnxruntime": ("ocr", "extract --ocr (reading the text in images)"),
}


class MissingExtraError(InputError):
    """An optional library a command needs is not installed; the message says which extra brings it."""


def install_hint(extra: str) -> str:
    """The command that installs one of our extras (quoted for every shell)."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def _message(module: str, extra: str, purpose: str) -> str:
    return (f"缺少可选依赖 {module}（{purpose}需要）：请运行 {install_hint(extra)} / "
            f"{purpose} needs {module}, which is not installed: {install_hint(extra)}")


def require(module: str) -> ModuleType:
    """Import an optional library, or refuse with the extra that installs it."""
    root = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != root:
            raise   # the library is there but one of its own dependencies is not: its message says which
        extra, purpose = EXTRAS[root]
        raise MissingExtraError(_message(root, extra, purpose)) from exc


def missing_extra(exc: BaseException) -> MissingExtraError | None:
    """The install hint for a ``ModuleNotFoundError`` of an optional library, else None."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    root = exc.name.split(".")[0]
    if root not in EXTRAS:
        return None
    extra, purpose = EXTRAS[root]
    return MissingExtraError(_message(root, extra, purpose))


def torch_mismatch(exc: BaseException) -> InputError | None:
    """torchvision built for another torch fails at import with 'operator torchvision::nms does not exist'."""
    if "torchvision::" in str(exc) and "does not exist" in str(exc):
        return InputError("torch 与 torchvision 版本不匹配：请一起重装 pip install --force-reinstall torch torchvision / "
                          f"torch and torchvision do not match ({exc}); reinstall them together so pip picks a "
                          "matching pair: pip install --force-reinstall torch torchvision")
    return None
