"""Features on disk: ``image_features.pt``, ``text_features.pt``, ``manifest.json`` and the expansion cache.

Owns the on-disk format: the typed ``Manifest`` (what made the features and which images
they cover), resolving an entry's path against the collection root, the format version
(older formats are migrated one step at a time, newer ones refused with "update
clip_retrieval"), and the project's one atomic writer, which every module that writes a
file uses. Nothing else opens these files. Tensors are saved as plain dicts of tensors and
strings in torch's own format (``torch.load(..., weights_only=True)`` reads them), written and
read here without importing torch (``runtime.ptfile``), so indexing and searching never pay
for it; all metadata is JSON. Vectors in memory are float32 numpy arrays.

Each write gets a fresh ``generation`` id stored in all three files. Files are written
under temporary names and renamed into place only after everything has been written, so
an interrupted or failed run (a full disk included) leaves the previous set intact; a
mixed set is detected on load. New files get the mode the user's umask gives any file.
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, TypedDict

import numpy as np

from .. import __version__
from ..core.errors import FeatureStoreError, ModelMismatchError, NewerFormatError
from ..core import ptfile
from ..core.files import make_output_folder, write_atomic, write_atomic_set, write_dir_atomic  # noqa: F401  (store.write_atomic: old API)
from ..core.hashing import tensor_fingerprint
from ..core.paths import resolve_path, user_cache_dir

FORMAT_VERSION = 1
IMAGE_FILE = "image_features.pt"
TEXT_FILE = "text_features.pt"
MANIFEST_FILE = "manifest.json"
EXPANSION_CACHE_FILE = "expansion_cache.pt"
# Migrations from format N to N+1, applied one step at a time to the manifest's JSON.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


# ---------------------------------------------------------------------------------------
# The manifest


class ImageEntry(TypedDict, total=False):
    """One indexed image; ``path`` as the source wrote it (relative to the manifest's root unless absolute)."""

    path: str
    sha256: str
    size: int
    mtime_ns: int
    captions: list[str]


class CaptionEntry(TypedDict):
    """One caption row: the image it belongs to (a row of ``images``), its text and its CSV line."""

    image: int
    text: str
    row: int


class SkippedEntry(TypedDict, total=False):
    """An image left out, with the reason a user can act on."""

    path: str
    row: int
    sha256: str
    reason: str


@dataclass
class ModelInfo:
    """The model that made the features: its name, the fingerprint of its weights, and local weights if any."""

    name: str
    fingerprint: str
    dim: int
    languages: list[str] = field(default_factory=list)
    checkpoint: str | None = None


@dataclass
class Manifest:
    """What a features folder holds and what made it (the typed form of ``manifest.json``)."""

    model: ModelInfo
    root: Path                                   # the collection root image paths are relative to
    images: list[ImageEntry]
    captions: list[CaptionEntry] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)
    source: dict = field(default_factory=dict)   # {"csv": FILE, ...} or {"images": DIR}
    image_decode: str = "draft"                  # how images were decoded: "draft" (JPEG draft mode) or "exact"
    environment: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__
    generation: str = ""
    features_fingerprint: str = ""
    text_features_fingerprint: str = ""
    extra: dict = field(default_factory=dict)    # keys this version does not know, written back as read

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def counts(self) -> dict[str, int]:
        return {"images": len(self.images), "captions": len(self.captions), "skipped": len(self.skipped)}

    def image_file(self, i: int) -> Path:
        """Where image ``i`` is on disk."""
        return resolve_path(self.root, self.images[i]["path"])

    def source_args(self) -> str:
        """The source options that built these features (``--csv FILE`` or ``--images DIR``)."""
        if self.source.get("csv"):
            return f"--csv {shlex.quote(str(self.source['csv']))}"
        if self.source.get("images"):
            return f"--images {shlex.quote(str(self.source['images']))}"
        return "--csv FILE|--images DIR"

    def rebuild_command(self, folder: str | os.PathLike, model: str | None = None,
                        checkpoint: str | None = None) -> str:
        """The extract command that rebuilds this folder from its own source.

        Without ``model``: with the model (and local weights) that built it; with ``model``:
        with that model and ``checkpoint``, so the features match the model the user has.
        """
        ckpt = checkpoint if model else self.model.checkpoint
        model = model or self.model.name
        parts = ["clipsou extract", self.source_args(), f"--model {shlex.quote(model)}"]
        if ckpt:
            parts.append(f"--checkpoint {shlex.quote(str(ckpt))}")
        parts.append(f"--out {shlex.quote(str(folder))}")
        return " ".join(parts)

    def to_json(self) -> dict:
        out = {"model": asdict(self.model), "source": self.source, "root": str(self.root),
               "image_decode": self.image_decode, "counts": self.counts,
               "images": self.images, "captions": self.captions, "skipped": self.skipped,
               "environment": self.environment, "format_version": self.format_version,
               "tool_version": self.tool_version, "generation": self.generation,
               "features_fingerprint": self.features_fingerprint,
               "text_features_fingerprint": self.text_features_fingerprint}
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        """The typed manifest; raises ``KeyError``/``TypeError`` when a required field is missing."""
        known = {f.name for f in fields(cls)} | {"counts"}
        model_keys = {f.name for f in fields(ModelInfo)}
        model = ModelInfo(**{k: v for k, v in data["model"].items() if k in model_keys})
        kwargs = {k: v for k, v in data.items() if k in known and k not in ("model", "root", "counts", "extra")}
        return cls(model=model, root=data["root"], **kwargs,
                   extra={k: v for k, v in data.items() if k not in known})


def _needs_rebuild(folder: Path, why: str, manifest: Manifest | None = None) -> FeatureStoreError:
    command = manifest.rebuild_command(folder) if manifest else \
        f"clipsou extract --csv FILE|--images DIR --out {shlex.quote(str(folder))}"
    return FeatureStoreError(f"{why}; 请重新提取 / rebuild with: {command}")


def _as_far_as_readable(data: dict) -> Manifest | None:
    """An old or damaged manifest read as well as it can be, so a rebuild hint can repeat its source."""
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError, AttributeError):
        return None


def _check_version(data: dict, path: Path, folder: Path) -> dict:
    """Migrate an older manifest one version at a time; refuse a newer one (update, do not rebuild)."""
    version = data.get("format_version")
    if not isinstance(version, int):
        raise _needs_rebuild(folder, f"{path}: 没有格式版本 / no format version (not a clip_retrieval manifest?)",
                             _as_far_as_readable(data))
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{path}: 由更新版本的 clip_retrieval 写入（格式 {version}），请升级 / written by a newer clip_retrieval "
            f"(format version {version}; this clip_retrieval {__version__} reads up to version {FORMAT_VERSION}); "
            f"update clip_retrieval: pip install -U clip_retrieval")
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise _needs_rebuild(folder, f"{path}: 格式太旧 / format version {version} is too old to migrate "
                                         f"(this clip_retrieval {__version__} reads version {FORMAT_VERSION})",
                                 _as_far_as_readable(data))
        data = MIGRATIONS[version](data)
        version += 1
        data["format_version"] = version
    return data


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """The checked, typed manifest of a features folder (migrated when an older format wrote it)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FeatureStoreError(f"{folder}: 没有 {MANIFEST_FILE}，请先提取特征 / no {MANIFEST_FILE}; build features first: "
                                f"clipsou extract --csv FILE|--images DIR --out {shlex.quote(str(folder))}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise _needs_rebuild(folder, f"{path}: 不是有效的 JSON / not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _needs_rebuild(folder, f"{path}: 不是 clip_retrieval 清单 / not a clip_retrieval manifest")
    data = _check_version(data, path, folder)
    manifest = _as_far_as_readable(data)
    if manifest is None:
        raise _needs_rebuild(folder, f"{path}: 清单不完整 / incomplete manifest (a required field is missing)")
    return manifest


# ---------------------------------------------------------------------------------------
# Features


@dataclass
class FeatureStore:
    """Loaded features plus the manifest that says what made them (float32 numpy matrices)."""

    folder: Path
    manifest: Manifest
    image_features: np.ndarray
    text_features: np.ndarray | None     # None until caption_features() is asked for
    _by_hash: dict[str, list[int]] | None = field(default=None, init=False, repr=False, compare=False)
    _by_path: dict[str, list[int]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model(self) -> str:
        return self.manifest.model.name

    @property
    def model_fingerprint(self) -> str:
        return self.manifest.model.fingerprint

    @property
    def fingerprint(self) -> str:
        return self.manifest.features_fingerprint

    @property
    def root(self) -> Path:
        return self.manifest.root

    def image_path(self, i: int) -> str:
        """The image path as a user wants to read it: relative to the working folder when inside it."""
        full = self.manifest.image_file(i)
        try:
            rel = os.path.relpath(full)
        except ValueError:
            return str(full)
        return str(full) if rel.startswith("..") else rel

    def captions_of(self, i: int) -> list[str]:
        return self.manifest.images[i].get("captions", [])

    def caption_features(self) -> np.ndarray:
        """Caption vectors, read from disk the first time they are needed."""
        if self.text_features is None or self.text_features.shape[0] != len(self.manifest.captions):
            self.text_features = _load_tensor(self.folder / TEXT_FILE, self.manifest, self.folder)
        return self.text_features

    def same_image(self, path: str | os.PathLike, sha256: str) -> set[int]:
        """Indexed images that are this file: the same path, or the same content under another name.

        Answered from two maps built on the first call (content hash, normalised path), so a
        query costs one ``resolve()`` of its own path, not one per indexed image. A symlink in
        the collection that points at the query file has the query's content, so the hash finds it.
        """
        if self._by_hash is None:
            self._by_hash, self._by_path = {}, {}
            for i, entry in enumerate(self.manifest.images):
                if entry.get("sha256"):
                    self._by_hash.setdefault(entry["sha256"], []).append(i)
                self._by_path.setdefault(os.path.normpath(entry["path"]), []).append(i)
        target = Path(path).resolve()
        keys = {str(target)}
        root = Path(self.root).resolve()
        if target.is_relative_to(root):
            keys.add(str(target.relative_to(root)))
        found = set(self._by_hash.get(sha256, ()))
        for key in keys:
            found.update(self._by_path.get(key, ()))
        return found

    def image_matrix(self) -> np.ndarray:
        """The image features as a C-contiguous float32 array (for the fast exact scan)."""
        return np.ascontiguousarray(self.image_features, dtype=np.float32)

    def check_model(self, model: str | None, fingerprint: str | None = None, checkpoint: str | None = None) -> None:
        """The one model-identity policy: refuse a model other than the one that built these features.

        Search, update and evaluation all call this. The name is checked before any model
        loads (a wrong ``--model`` fails at once); once a model is loaded its weights
        fingerprint decides, because a name proves nothing about weights
        (``open_clip:anything --checkpoint X`` loads whatever X holds).
        """
        if model and model != self.model:
            raise ModelMismatchError(
                f"{self.folder} 中的特征由 {self.model} 生成，不能用 {model} 检索；"
                f"请用该模型重新提取 / features in {self.folder} were built with {self.model}, "
                f"not {model}; rebuild them with: {self.manifest.rebuild_command(self.folder, model, checkpoint)}")
        if fingerprint and fingerprint != self.model_fingerprint:
            theirs, ours = f"{self.model} (weights {self.model_fingerprint})", f"{model or self.model} (weights {fingerprint})"
            raise ModelMismatchError(
                f"{self.folder} 中的特征由 {theirs} 生成，与当前模型 {ours} 的权重不同；"
                f"请用原权重，或重新提取 / features in {self.folder} were built with {theirs}, not with {ours}: "
                f"vectors from other weights cannot be compared. Use the weights that built them "
                f"(drop --checkpoint), or rebuild: "
                f"{self.manifest.rebuild_command(self.folder, model or self.model, checkpoint)}")


def save(folder: str | os.PathLike, image_features, text_features, manifest: Manifest,
         sidecars: dict[str, Callable[[str], str]] | None = None) -> Manifest:
    """Write the three files together, atomically; returns the manifest as written (arrays or CPU tensors).

    ``sidecars``: more files of the same set (the OCR text), each a file name and a function
    of the new generation id giving its text, so a reader can tell they belong together.
    """
    folder = Path(folder)
    image_features = np.ascontiguousarray(image_features, dtype=np.float32)
    text_features = np.ascontiguousarray(text_features, dtype=np.float32)
    generation = uuid.uuid4().hex
    written = replace(manifest, format_version=FORMAT_VERSION, tool_version=__version__, generation=generation,
                      features_fingerprint=tensor_fingerprint(image_features),
                      text_features_fingerprint=tensor_fingerprint(text_features))
    text = json.dumps(written.to_json(), ensure_ascii=False, indent=1)
    # tensors plus the zip container's headers (a few KB each), plus the manifest itself
    needed = 4 * (image_features.size + text_features.size) + 2 * 8192 + len(text.encode("utf-8"))
    write_atomic_set([
        (folder / IMAGE_FILE, lambda tmp: ptfile.write(tmp, {"features": image_features, "generation": generation})),
        (folder / TEXT_FILE, lambda tmp: ptfile.write(tmp, {"features": text_features, "generation": generation})),
        (folder / MANIFEST_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8")),
        *[(folder / name, lambda tmp, body=make(generation): tmp.write_text(body, encoding="utf-8"))
          for name, make in (sidecars or {}).items()],
    ], needed)
    return written


def _load_tensor(path: Path, manifest: Manifest, folder: Path) -> np.ndarray:
    """A features matrix, memory-mapped from the ``.pt`` without torch."""
    if not path.is_file():
        raise _needs_rebuild(folder, f"{path}: 文件缺失 / is missing", manifest)
    try:
        payload = ptfile.read(path)
    except Exception as exc:  # any damage reads as "rebuild", never as a traceback
        raise _needs_rebuild(folder, f"{path}: 特征文件无法读取 / is not a readable features file ({exc})", manifest) from exc
    if not isinstance(payload, dict) or payload.get("generation") != manifest.generation:
        raise _needs_rebuild(folder, f"{path}: 与清单不匹配 / does not belong to {folder / MANIFEST_FILE} "
                                      f"(an interrupted write?)",
                             manifest)
    return payload["features"]


def load(folder: str | os.PathLike, with_text: bool = True) -> FeatureStore:
    """Load and check a features folder; ``with_text=False`` skips the caption features."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    images = _load_tensor(folder / IMAGE_FILE, manifest, folder)
    texts = _load_tensor(folder / TEXT_FILE, manifest, folder) if with_text else None
    if images.shape[0] != len(manifest.images):
        raise _needs_rebuild(folder, f"{folder}: 向量数与清单不符 / {images.shape[0]} image vectors but {len(manifest.images)} "
                                     f"images in the manifest", manifest)
    return FeatureStore(folder=folder, manifest=manifest, image_features=images, text_features=texts)


def _shared_expansion_cache(model_fingerprint: str, rules_sha256: str) -> Path:

    return user_cache_dir() / "expansions" / f"{model_fingerprint.replace('sha256:', '')}-{rules_sha256[:16]}.pt"


def save_expansion_cache(folder: str | os.PathLike, texts: list[str], embeddings,
                         model_fingerprint: str, rules_sha256: str) -> Path:
    """Embeddings of every phrase in a rules file, tagged with the model and rules they came from.

    Written beside the features and once per (weights, rules) in the user cache, which every
    other features folder of those weights reads instead of encoding the table again.
    """
    path = Path(folder) / EXPANSION_CACHE_FILE
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    payload = {"texts": json.dumps(list(texts), ensure_ascii=False), "embeddings": embeddings,
               "model_fingerprint": model_fingerprint, "rules_sha256": rules_sha256,
               "format_version": str(FORMAT_VERSION)}
    needed = 4 * embeddings.size + sum(len(t.encode("utf-8")) + 64 for t in texts) + 8192
    write_atomic(path, lambda tmp: ptfile.write(tmp, payload), needed)
    shared = _shared_expansion_cache(model_fingerprint, rules_sha256)
    if not shared.is_file():
        try:
            write_atomic(shared, lambda tmp: ptfile.write(tmp, payload), needed)
        except OSError:   # the copy beside the features is enough for this folder
            pass
    return path


def _read_expansion_cache(path: Path, model_fingerprint: str, rules_sha256: str):
    if not path.is_file():
        return None
    try:
        payload = ptfile.read(path)
        if (payload.get("model_fingerprint") != model_fingerprint or payload.get("rules_sha256") != rules_sha256
                or payload.get("format_version") != str(FORMAT_VERSION)):
            return None
        return json.loads(payload["texts"]), np.asarray(payload["embeddings"])
    except Exception:  # a damaged cache (or one from an older format) is rebuilt, never trusted
        return None


def load_expansion_cache(folder: str | os.PathLike, model_fingerprint: str,
                         rules_sha256: str) -> tuple[list[str], np.ndarray] | None:
    """The cached phrases and embeddings (beside the features, else the shared copy for these weights),
    or None when missing or made for another model or rules file."""
    return (_read_expansion_cache(Path(folder) / EXPANSION_CACHE_FILE, model_fingerprint, rules_sha256)
            or _read_expansion_cache(_shared_expansion_cache(model_fingerprint, rules_sha256),
                                     model_fingerprint, rules_sha256))
