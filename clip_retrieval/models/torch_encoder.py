"""The torch runtime of the ``Encoder`` protocol, which every model family builds.

Owns batching, normalisation, autocast on CUDA and the model identity (name + weights
fingerprint) for torch models. Families (``openclip``, ``cnclip``) only say how to turn
pixels and token ids into raw embeddings; they must not read files other than their
weights, nor know about stores or search.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..core.hashing import fingerprint


@dataclass
class TorchEncoder:
    """A loaded CLIP-style torch model with its matching tokenizer and image transform.

    ``encode_images``/``encode_texts`` return L2-normalised float32 tensors on the CPU,
    so callers never care where the model runs.
    """

    name: str
    fingerprint: str
    dim: int
    languages: frozenset[str]
    preprocess: Callable
    device: torch.device
    image_size: int
    logit_scale: float
    context_length: int
    model: torch.nn.Module = field(repr=False)
    _tokenize: Callable[[list[str]], torch.Tensor] = field(repr=False)
    _encode_image: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    _encode_tokens: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    autocast: bool = False
    runtime: ClassVar[str] = "torch"

    @property
    def id(self) -> str:
        return f"{self.name}@{self.fingerprint}"

    def prefetch(self, tower: str) -> None:
        """Nothing to open ahead: a torch model loads both towers at once (ONNX towers open on their own)."""

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids padded to the model's context length (the library's own tokenizer)."""
        return self._tokenize(list(texts))

    def _autocast(self):
        if self.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encode a preprocessed batch ``[N, 3, H, W]``."""
        if pixels.shape[0] == 0:
            return torch.empty(0, self.dim)
        pixels = pixels.to(self.device, non_blocking=True)
        with self._autocast():
            feats = self._encode_image(pixels)
        return F.normalize(feats.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Encode texts in batches (families trim padding where that leaves the result unchanged)."""
        out = []
        texts = list(texts)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start:start + batch_size]).to(self.device)
            with self._autocast():
                feats = self._encode_tokens(tokens)
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        if not out:
            return torch.empty(0, self.dim)
        return torch.cat(out)


def state_dict_fingerprint(model: torch.nn.Module) -> str:
    """Hash of every parameter and buffer, for weights that exist only in memory."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return fingerprint(digest.hexdigest())
