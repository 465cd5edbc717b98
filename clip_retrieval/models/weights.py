"""Finding weights on disk, and failing fast and clearly when they are not there.

Owns: where each family caches downloads, whether a download host answers, the
offline error message, and file fingerprints. It must not build models.

The upstream loaders retry for 25-45 s before giving up on an unreachable hub, so we
look in the cache first and probe the host with a short timeout before handing over.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.errors import InputError, ModelUnavailableError
from ..core.files import read_json_map, remember_in_json_map
from ..core.hashing import fingerprint, sha256_file
from ..core.paths import user_cache_dir

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
MODELSCOPE_URL = "https://modelscope.cn/models"


def hf_endpoint() -> str:
    """Where Hugging Face downloads go: ``HF_ENDPOINT`` (a mirror, common in mainland China) or huggingface.co.

    Read from huggingface_hub itself, so the probe, the download and the message name one host.
    """
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def hf_file_url(repo_id: str, filename: str) -> str:
    """The address huggingface_hub downloads ``repo_id/filename`` from (revision main)."""
    return f"{hf_endpoint()}/{repo_id}/resolve/main/{filename}"


def offline_switch() -> bool:
    """True when the user said not to use the network (our switch or huggingface_hub's)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("CLIP_RETRIEVAL_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the server at ``url`` answers an HTTP request within ``timeout`` seconds.

    An HTTP answer of any status counts; a refused connection, a port that accepts but never
    answers (a black-holing firewall), DNS failure or a TLS failure do not. Proxies from the
    environment are honoured, as huggingface_hub honours them.
    """
    if offline_switch():
        return False
    request = urllib.request.Request(url.rstrip("/") + "/", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError) as exc:  # URLError, timeouts, resets and bad addresses are all OSError
        log.debug("probe of %s failed: %s", url, exc)
        return False


@contextmanager
def hub_offline(enabled: bool = True) -> Iterator[None]:
    """huggingface_hub and transformers read only the cache inside this block (no request, no retry)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


# A Hugging Face mirror widely used where huggingface.co cannot be reached (mainland China).
HF_MIRROR = "https://hf-mirror.com"
CHINESE_MODEL = "cn_clip:ViT-B-16"


def clip_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where OpenAI's CLIP files and Chinese-CLIP's downloads live (``~/.cache/clip``, as both upstreams use)."""
    return Path(cache_dir or os.path.expanduser("~/.cache/clip"))


def _direct_urls(entry) -> list[str]:
    """The plain web addresses among a catalogue entry's other places (``modelscope:`` pages left out)."""
    return [m.strip() for m in (entry.mirror or "").split(";") if m.strip().startswith("http")]


def _address(place: str) -> str:
    """A catalogue place as a user opens it: ``modelscope:ORG/REPO/FILE`` becomes its page and file."""
    if place.startswith("modelscope:"):
        repo, _, file = place.removeprefix("modelscope:").rpartition("/")
        return f"{MODELSCOPE_URL}/{repo} ({file})"
    return place


def _advice(model: str) -> tuple[str, str]:
    """(Chinese, English) extra guidance from the catalogue: where else the weights are, where a
    downloaded file goes, and the model to fetch instead when this one reads no Chinese."""
    from .catalog import MODELS

    entry = MODELS.get(model)
    if entry is None:
        return "", ""
    zh, en = [], []
    file = None
    if entry.mirror:
        places = "; ".join(_address(m.strip()) for m in entry.mirror.split(";"))
        zh.append(f"其他下载地址：{places}")
        en.append(f"Also published at: {places}")
        direct = _direct_urls(entry)
        file = os.path.basename(direct[0]) if direct else None
    if file:
        target = clip_cache_dir() / file
        zh.append(f"下载后放到 {target}（或用 --checkpoint 指定）")
        en.append(f"a downloaded file is found at {target} (or pass it as --checkpoint PATH)")
    if entry.family == "cn_clip":
        zh.append("也可设 CLIP_RETRIEVAL_CN_CLIP_MIRROR=网址前缀，从 前缀/文件名 下载")
        en.append("or set CLIP_RETRIEVAL_CN_CLIP_MIRROR=URL_PREFIX to download PREFIX/FILE from any plain web server")
    if "zh" not in entry.languages:
        zh.append(f"注意：{model} 只读英文，中文查询请改用 {CHINESE_MODEL}")
        en.append(f"note: {model} reads English only; for Chinese queries fetch {CHINESE_MODEL} instead")
    return "".join(z + "。" for z in zh), "".join(f" {e[0].upper()}{e[1:]}." for e in en)


def unavailable(model: str, looked_in: list[str], host: str, fetch: list[str] | None = None,
                also: list[str] | None = None) -> ModelUnavailableError:
    """The offline message, in Chinese and English: where we looked, the host probed (or that offline mode
    tried none), what to fetch, the mirrors and the way out."""
    places = ", ".join(looked_in) or "-"
    files = "; ".join(fetch or []) or "-"
    mirrors = "; ".join(also or [])
    zh_also = f"该权重也发布在：{mirrors}。" if mirrors else ""
    en_also = f" The weights are also published at: {mirrors}." if mirrors else ""
    zh_more, en_more = _advice(model)
    if offline_switch():
        zh_why, en_why = "，且已设为离线模式，未尝试联网", "; offline mode is set (CLIP_RETRIEVAL_OFFLINE / HF_HUB_OFFLINE), so nothing was tried"
    else:
        zh_why, en_why = f"，且无法连接 {host}", f" and {host} is unreachable"
    return ModelUnavailableError(
        f"无法加载模型 {model} 的权重：本地缓存中没有（查找位置：{places}）{zh_why}。"
        f"需要下载：{files}。{zh_also}{zh_more}可将环境变量 HF_ENDPOINT 设为可访问的镜像站（如 {HF_MIRROR}）后重试；"
        f"离线使用：在能联网的机器上下载权重文件，复制过来后用 --checkpoint PATH 指定，"
        f"或使用内置离线模型 --model demo。 / "
        f"Cannot load weights for {model}: not in the local cache (looked in: {places}){en_why}. "
        f"Files to fetch: {files}.{en_also}{en_more} Set HF_ENDPOINT to a mirror you can reach "
        f"(e.g. HF_ENDPOINT={HF_MIRROR}) and retry; to work offline, download the weights file on a connected "
        f"machine, copy it here and pass --checkpoint PATH, or use the bundled offline model "
        f"--model demo."
    )


def invalid_checkpoint(path: str | os.PathLike, exc: BaseException) -> InputError:
    """A weights file that does not load: most often a broken or partial download, so say that and its size
    (never torch's advice to load it with ``weights_only=False``, which is unsafe and fixes nothing)."""
    try:
        size = f"{Path(path).stat().st_size:,} 字节 bytes"
    except OSError:
        size = "?"
    log.debug("%s does not load: %s", path, exc)   # torch's text advises weights_only=False: not for users
    if "Unsupported global" in str(exc):   # a whole pickled object, not a broken file
        return InputError(f"{path} 含有张量以外的 Python 对象，出于安全只加载纯权重（weights_only=True）；请只保存 state_dict / "
                          f"{path} holds pickled Python objects besides tensors ({size}); weights are loaded with "
                          f"weights_only=True, which runs no pickle code: save only the state_dict (torch.save(model"
                          f".state_dict(), path)) or use the published file")
    return InputError(f"{path} 不是有效的权重文件（{size}），可能下载不完整或已损坏，请重新下载 / "
                      f"{path} is not a valid checkpoint ({size}, {type(exc).__name__}); the download may "
                      f"be incomplete or damaged: download it again")


# The files open_clip looks for in a hub repository, in its order (open_clip.pretrained's
# HF_SAFE_WEIGHTS_NAME and HF_WEIGHTS_NAME; tests/unit/test_encoders.py keeps them equal).
OPEN_CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _snapshot_cached(repo_id: str) -> bool:
    """Whether the hub cache holds any file of ``repo_id`` (the loader then decides which it needs)."""
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(p.is_file() for p in snapshots.rglob("*"))


def preflight(model: str) -> None:
    """Before torch is imported: refuse at once a documented model whose weights are surely not here
    and cannot be fetched (offline mode, or the host does not answer within seconds).

    Only certain absence refuses: when any file of the model is in a cache, or the name is not in
    the catalogue, the family's loader decides as before.
    """
    from .catalog import MODELS

    entry = MODELS.get(model)
    if entry is None or not entry.download.startswith("hf:"):
        return
    from huggingface_hub import constants

    repo = entry.download[3:]
    clip_dir = clip_cache_dir()
    if entry.family == "cn_clip":
        repo, _, file = repo.rpartition("/")
        local = [clip_dir / file]
        mirror = os.environ.get("CLIP_RETRIEVAL_CN_CLIP_MIRROR", "").rstrip("/")
        host = mirror or hf_endpoint()
        fetch = [f"{mirror}/{file}" if mirror else hf_file_url(repo, file)]
        also = [hf_file_url(repo, file)] if mirror else []
    else:
        local = [clip_dir / os.path.basename(u) for u in _direct_urls(entry)]
        host = hf_endpoint()
        first, *others = [hf_file_url(repo, f) for f in OPEN_CLIP_HUB_FILES]
        fetch, also = [first + "".join(f" (or {o})" for o in others)], []
    if _snapshot_cached(repo) or any(p.is_file() for p in local):
        return
    if not offline_switch() and reachable(host):
        return
    looked = [f"{constants.HF_HUB_CACHE} ({repo})", *map(str, local)]
    raise unavailable(model, looked, host, fetch, also)


def download_failed(model: str, url: str, exc: BaseException) -> ModelUnavailableError:
    """A download that started and broke: what failed, that nothing half-written was kept, and the way out."""
    return ModelUnavailableError(
        f"下载 {model} 的权重时中断（{url}：{type(exc).__name__}: {exc}）。未完成的文件没有留在缓存中；"
        f"重新运行同一命令即可重新下载。网络不稳定时可把 HF_ENDPOINT 设为镜像站，"
        f"或在别处下载后用 --checkpoint PATH 指定。 / "
        f"Downloading weights for {model} broke off ({url}: {type(exc).__name__}: {exc}). No partial file was "
        f"kept in the cache; rerun the same command to download again. On a flaky network set HF_ENDPOINT to "
        f"a mirror, or download the file elsewhere and pass --checkpoint PATH."
    )


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a weights file, remembered by (path, size, mtime) so searches stay cheap."""
    path = Path(path).resolve()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode())
            digest.update(file_fingerprint(p).encode())
        return fingerprint(digest.hexdigest())
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = user_cache_dir("fingerprints.json")
    cached = read_json_map(cache_file).get(key)
    if cached:
        return cached
    value = fingerprint(sha256_file(path))
    remember_in_json_map(cache_file, key, value)
    return value
