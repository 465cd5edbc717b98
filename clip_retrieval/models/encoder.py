"""The ``Encoder`` protocol every runtime serves, and the one way to open an encoder only when needed.

Owns what callers may rely on: a model identity (``name``, ``fingerprint``, ``id``), the
embedding size, the languages its text tower reads, the image transform that matches it,
``encode_images`` / ``encode_texts`` returning L2-normalised float32 rows (numpy arrays or
CPU tensors: ``np.asarray`` reads both), and ``prefetch``. Two runtimes implement it:
``torch_encoder.TorchEncoder`` (training, export, CUDA/MPS) and ``onnx.OnnxEncoder`` (CPU).
It must not import torch: a search process never does.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable


@runtime_checkable
class Encoder(Protocol):
    """A loaded CLIP-style model with its matching tokenizer and image transform."""

    name: str
    fingerprint: str
    dim: int
    languages: frozenset[str]
    image_size: int
    logit_scale: float
    context_length: int
    runtime: str          # "torch" or "onnxruntime": recorded in the manifest's environment
    preprocess: Callable
    device: Any           # has ``.type`` ("cpu", "cuda", "mps")

    @property
    def id(self) -> str:
        """``name@fingerprint``: the model and its weights exactly."""

    def prefetch(self, tower: str) -> None:
        """Start opening a tower ("visual" or "text") ahead of its first use, where that helps."""

    def encode_images(self, pixels: Any) -> Any:
        """Embed a preprocessed batch ``[N, 3, H, W]``: ``[N, dim]`` L2-normalised float32 rows."""

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> Any:
        """Embed texts: ``[N, dim]`` L2-normalised float32 rows."""


class OnDemand:
    """An encoder, or the function that opens it, opened the first time something needs it.

    The one lazy wrapper: ``--update`` with nothing new and a query answered from the
    expansion cache load no model at all. ``accept`` (a check such as ``check_model``) runs
    once on whatever encoder is used, given or opened.
    """

    def __init__(self, source: Encoder | Callable[[], Encoder], accept: Callable[[Encoder], None] | None = None):
        self._accept = accept
        self._encoder: Encoder | None = None
        self._open: Callable[[], Encoder] | None = None
        if isinstance(source, Encoder):
            self._use(source)
        else:
            self._open = source

    def _use(self, encoder: Encoder) -> Encoder:
        if self._accept is not None:
            self._accept(encoder)
        self._encoder = encoder
        return encoder

    @property
    def loaded(self) -> Encoder | None:
        """The encoder if it is open already, else None (nothing is opened by asking)."""
        return self._encoder

    @property
    def can_open(self) -> bool:
        """Whether there is a way to open one (an encoder given, or a function)."""
        return self._encoder is not None or self._open is not None

    def get(self) -> Encoder:
        """The encoder, opened now if it was not yet."""
        if self._encoder is None:
            self._use(self._open())
        return self._encoder
