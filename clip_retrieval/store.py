"""Features on disk: ``image_features.pt``, ``text_features.pt`` and ``manifest.json``.

Owns the on-disk format, its version, atomic writes and loading checks. Nothing else
opens these files. Tensors are saved as plain dicts of tensors and strings and loaded
with ``weights_only=True``; all metadata is JSON.

Each write gets a fresh ``generation`` id stored in all three files. Files are written
under temporary names and renamed into place only after everything has been encoded,
so an interrupted run leaves the previous set intact; a mixed set is detected on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import FeatureStoreError, ModelMismatchError

FORMAT_VERSION = 1
IMAGE_FILE = "image_features.pt"
TEXT_FILE = "text_features.pt"
MANIFEST_FILE = "manifest.json"
EXPANSION_CACHE_FILE = "expansion_cache.pt"


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    return "sha256:" + hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


@contextlib.contextmanager
def _signals_deferred():
    """Hold Ctrl-C while the renames run, so they happen all together or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *a: received.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def write_atomic(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` then rename into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class FeatureStore:
    """Loaded features plus the manifest that says what made them."""

    folder: Path
    manifest: dict
    image_features: torch.Tensor
    text_features: torch.Tensor | None     # None until caption_features() is asked for

    @property
    def model(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def model_fingerprint(self) -> str:
        return self.manifest["model"]["fingerprint"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["features_fingerprint"]

    @property
    def root(self) -> Path:
        return Path(self.manifest["root"])

    def image_path(self, i: int) -> str:
        """The image path as a user wants to read it: relative to the working folder when inside it."""
        path = Path(self.manifest["images"][i]["path"])
        full = path if path.is_absolute() else self.root / path
        try:
            rel = os.path.relpath(full)
        except ValueError:
            return str(full)
        return str(full) if rel.startswith("..") else rel

    def captions_of(self, i: int) -> list[str]:
        return self.manifest["images"][i].get("captions", [])

    def caption_features(self) -> torch.Tensor:
        """Caption vectors, read from disk the first time they are needed."""
        if self.text_features is None or self.text_features.shape[0] != len(self.manifest["captions"]):
            self.text_features = _load_tensor(self.folder / TEXT_FILE, self.manifest["generation"], self.folder)
        return self.text_features

    def same_image(self, path: str | os.PathLike, sha256: str) -> set[int]:
        """Indexed images that are this file: the same path, or the same content under another name."""
        target = str(Path(path).resolve())
        found = set()
        for i, entry in enumerate(self.manifest["images"]):
            p = Path(entry["path"])
            if entry.get("sha256") == sha256 or str((p if p.is_absolute() else self.root / p).resolve()) == target:
                found.add(i)
        return found

    def image_matrix(self) -> np.ndarray:
        """The image features as a C-contiguous float32 array (for the fast exact scan)."""
        return np.ascontiguousarray(self.image_features.numpy(), dtype=np.float32)

    def check_model(self, model: str | None) -> None:
        """Refuse to search these features with a model other than the one that built them."""
        if model and model != self.model:
            raise ModelMismatchError(
                f"{self.folder} 中的特征由 {self.model} 生成，不能用 {model} 检索；"
                f"请用该模型重新提取 / features in {self.folder} were built with {self.model}, "
                f"not {model}; rebuild them with: clip-retrieval extract --model {model} --out {self.folder}")


def save(folder: str | os.PathLike, image_features: torch.Tensor, text_features: torch.Tensor,
         manifest: dict) -> dict:
    """Write the three files atomically; returns the manifest as written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_features = image_features.float().contiguous()
    text_features = text_features.float().contiguous()
    generation = uuid.uuid4().hex
    manifest = dict(manifest)
    manifest.update({
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "generation": generation,
        "features_fingerprint": tensor_fingerprint(image_features),
        "text_features_fingerprint": tensor_fingerprint(text_features),
    })
    staged = []
    try:
        for name, tensor in ((IMAGE_FILE, image_features), (TEXT_FILE, text_features)):
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(fd)
            staged.append((tmp, folder / name))
            torch.save({"features": tensor, "generation": generation}, tmp)
        fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_FILE}.", suffix=".tmp", dir=folder)
        os.close(fd)
        staged.append((tmp, folder / MANIFEST_FILE))
        Path(tmp).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        with _signals_deferred():
            for tmp, final in staged:
                os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FeatureStoreError(
            f"{folder}: no {MANIFEST_FILE}; build features first: clip-retrieval extract --out {folder}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FeatureStoreError(f"{path}: not valid JSON ({exc}); rebuild with clip-retrieval extract --out {folder}") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FeatureStoreError(
            f"{path}: format version {version}, this clip_retrieval {__version__} reads version {FORMAT_VERSION}; "
            f"rebuild with clip-retrieval extract --out {folder}")
    return manifest


def _load_tensor(path: Path, generation: str, folder: Path) -> torch.Tensor:
    if not path.is_file():
        raise FeatureStoreError(f"{path} is missing; rebuild with clip-retrieval extract --out {folder}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("generation") != generation:
        raise FeatureStoreError(
            f"{path} does not belong to {folder / MANIFEST_FILE} (an interrupted write?); "
            f"rebuild with clip-retrieval extract --out {folder}")
    return payload["features"]


def load(folder: str | os.PathLike, with_text: bool = True) -> FeatureStore:
    """Load and check a features folder; ``with_text=False`` skips the caption features."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    generation = manifest["generation"]
    images = _load_tensor(folder / IMAGE_FILE, generation, folder)
    texts = _load_tensor(folder / TEXT_FILE, generation, folder) if with_text else None
    if images.shape[0] != len(manifest["images"]):
        raise FeatureStoreError(f"{folder}: {images.shape[0]} image vectors but {len(manifest['images'])} "
                                f"images in the manifest; rebuild with clip-retrieval extract --out {folder}")
    return FeatureStore(folder=folder, manifest=manifest, image_features=images, text_features=texts)


def save_expansion_cache(folder: str | os.PathLike, texts: list[str], embeddings: torch.Tensor,
                         model_fingerprint: str, rules_sha256: str) -> Path:
    """Embeddings of every phrase in a rules file, tagged with the model and rules they came from."""
    path = Path(folder) / EXPANSION_CACHE_FILE
    payload = {"texts": list(texts), "embeddings": embeddings.float().contiguous(),
               "model_fingerprint": model_fingerprint, "rules_sha256": rules_sha256, "format_version": FORMAT_VERSION}
    write_atomic(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_expansion_cache(folder: str | os.PathLike, model_fingerprint: str,
                         rules_sha256: str) -> tuple[list[str], torch.Tensor] | None:
    """The cached phrases and embeddings, or None when missing or made for another model or rules file."""
    path = Path(folder) / EXPANSION_CACHE_FILE
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    if (payload.get("model_fingerprint") != model_fingerprint or payload.get("rules_sha256") != rules_sha256
            or payload.get("format_version") != FORMAT_VERSION):
        return None
    return payload["texts"], payload["embeddings"]
