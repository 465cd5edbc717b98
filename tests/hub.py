"""A local model hub for tests: an HTTP server on 127.0.0.1 that answers as huggingface.co and plain download
hosts do, the upstream models' files it serves, and the Hugging Face cache layout.

The served weights are random (seeded) but have each upstream's exact repository, file name and
layout, so the real loaders (open_clip, cn_clip, huggingface_hub, transformers) take the path a user's
first download takes. ``put_in_hf_cache`` stands in for a user whose weights are already downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

import pytest


def commit_of(repo_id: str) -> str:
    """A stable 40-hex commit id per repository (the hub's X-Repo-Commit)."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def put_in_hf_cache(cache: str | os.PathLike, repo_id: str, filename: str, source: str | os.PathLike) -> Path:
    """Copy ``source`` into the Hugging Face cache at ``cache`` as ``repo_id/filename`` at revision main."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    commit = commit_of(repo_id)
    target = repo / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return target


LFS_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".model", ".npz")


def git_blob_sha1(path: Path) -> str:
    """The ETag the hub gives a small (non-LFS) file: git's blob hash."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalHub:
    """An HTTP server on 127.0.0.1 that answers as huggingface.co and plain download hosts do.

    ``/{repo}/resolve/{revision}/{file}``: small files answer 200 with ``ETag`` (git blob hash),
    ``X-Repo-Commit`` and ``Content-Length``; weights files (LFS) answer 302 to a CDN address on
    another host name (``localhost``) with ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``, as the hub
    does. A missing file is 404 ``EntryNotFound``, a missing repository 401 ``RepoNotFound``, a
    renamed repository a relative 307 (``xlm-roberta-base`` lives at ``FacebookAI/xlm-roberta-base``).
    The CDN honours ``Range``. No Xet headers are ever sent, so huggingface_hub takes its plain HTTP path.
    ``/plain/NAME`` serves files for loaders that download from a URL. Every request is logged.
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Path]] = {}
        self.renamed: dict[str, str] = {}
        self.plain: dict[str, Path] = {}
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[str] = []
        self.cut_at: dict[Path, int] = {}  # files whose transfer always breaks off at this byte
        self._blobs: dict[str, Path] = {}
        self._etags: dict[Path, str] = {}
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    # -- content -------------------------------------------------------------------------------------------------
    def add(self, repo_id: str, filename: str, path: str | os.PathLike) -> None:
        self.repos.setdefault(repo_id, {})[filename] = Path(path)

    def add_plain(self, name: str, path: str | os.PathLike) -> str:
        self.plain[name] = Path(path)
        return f"{self.url}/plain/{name}"

    def etag(self, path: Path) -> str:
        if path not in self._etags:
            self._etags[path] = sha256_of(path) if path.name.endswith(LFS_SUFFIXES) else git_blob_sha1(path)
        return self._etags[path]

    # -- lifecycle -----------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalHub":
        """Listen (again) on the same port, so a test can stop the hub and bring it back."""
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p in self.requests if method is None or m == method]

    # -- answers -------------------------------------------------------------------------------------------------
    def _answer(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        self.requests.append((req.command, path))
        if path.startswith("/plain/") and path[len("/plain/"):] in self.plain:
            return self._send_file(req, self.plain[path[len("/plain/"):]], body)
        if path.startswith("/cdn/") and path[len("/cdn/"):] in self._blobs:
            return self._send_file(req, self._blobs[path[len("/cdn/"):]], body)
        if "/resolve/" not in path:
            return self._send(req, 404, {"X-Error-Message": "not found"}, b"", body)
        repo_id, _, rest = path.strip("/").partition("/resolve/")
        revision, _, filename = rest.partition("/")
        if repo_id in self.renamed:
            return self._send(req, 307, {"Location": f"/{self.renamed[repo_id]}/resolve/{revision}/{filename}"},
                              b"", body)
        if repo_id not in self.repos:
            return self._send(req, 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                              b"", body)
        commit = commit_of(repo_id)
        if revision not in ("main", commit):
            return self._send(req, 404, {"X-Error-Code": "RevisionNotFound"}, b"", body)
        headers = {"X-Repo-Commit": commit}
        if filename not in self.repos[repo_id]:
            headers.update({"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
            return self._send(req, 404, headers, b"", body)
        file = self.repos[repo_id][filename]
        etag = self.etag(file)
        if file.name.endswith(LFS_SUFFIXES):
            self._blobs[etag] = file
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(file.stat().st_size),
                            "ETag": f'"{git_blob_sha1_of_pointer(etag, file)}"',
                            "Location": f"http://localhost:{self.port}/cdn/{etag}"})
            return self._send(req, 302, headers, b"", body)
        return self._send_file(req, file, body, {**headers, "ETag": f'"{etag}"'})

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body and data:
            req.wfile.write(data)

    def _send_file(self, req: BaseHTTPRequestHandler, file: Path, body: bool, headers: dict[str, str] | None = None
                   ) -> None:
        size = file.stat().st_size
        start, end = 0, size - 1
        status = 200
        wanted = req.headers.get("Range", "")
        if wanted:
            self.ranges.append(wanted)
        if wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            start = int(first or 0)
            end = min(int(last), size - 1) if last else size - 1
            status = 206
        req.send_response(status)
        for key, value in (headers or {"ETag": f'"{self.etag(file)}"'}).items():
            req.send_header(key, value)
        req.send_header("Accept-Ranges", "bytes")
        req.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            req.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        req.end_headers()
        if not body:
            return
        with open(file, "rb") as handle:
            handle.seek(start)
            left = end - start + 1
            if file in self.cut_at:
                left = max(0, min(left, self.cut_at[file] - start))
                req.close_connection = True
            while left > 0:
                chunk = handle.read(min(left, 1 << 20))
                if not chunk:
                    break
                try:
                    req.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                left -= len(chunk)


def git_blob_sha1_of_pointer(sha256: str, file: Path) -> str:
    """The ETag of an LFS file's pointer (what ``ETag`` carries on the hub; ``X-Linked-Etag`` names the content)."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {file.stat().st_size}\n"
    data = pointer.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class SilentPort:
    """A loopback port whose kernel completes the TCP handshake but that never answers (a black-holing firewall)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


def closed_port_url() -> str:
    """An address on loopback where nothing listens (connections are refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- the upstream models, as their hubs publish them ----------------------------------------------------------------

SEED = 0


@dataclass(frozen=True)
class Published:
    """One documented model name and where its upstream publishes its files."""

    name: str
    repo: str                    # the hub repository the weights come from
    filename: str                # the weights file name in that repository
    text_repos: tuple[str, ...] = ()  # repositories the text tower reads config/tokenizer files from

    @property
    def family(self) -> str:
        return self.name.partition(":")[0]

    @property
    def spec(self) -> str:
        return self.name.partition(":")[2]


PUBLISHED: dict[str, Published] = {p.name: p for p in (
    Published("open_clip:ViT-B-32/openai", "timm/vit_base_patch32_clip_224.openai", "open_clip_model.safetensors"),
    # Served without a safetensors twin, so open_clip's fallback to the .bin (after a 404) is exercised too.
    Published("open_clip:ViT-B-32/laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
              "open_clip_pytorch_model.bin"),
    Published("open_clip:xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k",
              "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k", "open_clip_pytorch_model.bin",
              ("xlm-roberta-base",)),
    Published("open_clip:ViT-B-16-SigLIP2/webli", "timm/ViT-B-16-SigLIP2", "open_clip_model.safetensors",
              ("timm/ViT-B-16-SigLIP2",)),
    Published("open_clip:nllb-clip-base-siglip/mrl", "visheratin/nllb-siglip-mrl-base", "open_clip_pytorch_model.bin",
              ("facebook/nllb-200-distilled-600M",)),
    Published("cn_clip:ViT-B-16", "OFA-Sys/chinese-clip-vit-base-patch16", "clip_cn_vit-b-16.pt"),
    Published("cn_clip:RN50", "OFA-Sys/chinese-clip-rn50", "clip_cn_rn50.pt"),
)}


# Characters and words the small tokenizers know: the test captions and queries, plus ASCII letters.
TOKEN_CHARS = sorted(set("草地上的金毛灰猫海边小狗雪里奔跑哈士奇旁还有一辆红色汽车猪在公园花朵夕阳城市街道山湖泊森林"
                         "白黑黄蓝绿只个张照片沙滩房间桌子草坪") | set("abcdefghijklmnopqrstuvwxyz"))

# Hugging Face repositories renamed upstream; the hub answers the old name with a redirect, as huggingface.co does.
RENAMED = {"xlm-roberta-base": "FacebookAI/xlm-roberta-base"}


def _pieces(specials: list[str]) -> dict[str, int]:
    vocab = {tok: i for i, tok in enumerate(specials)}
    for piece in ["\u2581", *TOKEN_CHARS, *("\u2581" + c for c in TOKEN_CHARS)]:
        vocab.setdefault(piece, len(vocab))
    return vocab


def build_text_repo(repo: str, folder: Path) -> dict[str, Path]:
    """The config and small tokenizer files a text tower fetches from ``repo``, written with transformers' own
    classes (so transformers reads them back as it reads the real ones); real architecture sizes in config.json."""
    target = folder / ("text--" + repo.replace("/", "--"))
    if not (target / "tokenizer_config.json").is_file():
        if repo == "xlm-roberta-base":
            from transformers import XLMRobertaConfig, XLMRobertaTokenizer

            vocab = [(tok, 0.0) for tok in ("<s>", "<pad>", "</s>", "<unk>")]
            vocab += [(piece, -5.0) for piece in list(_pieces([]))] + [("<mask>", 0.0)]
            XLMRobertaTokenizer(vocab=vocab).save_pretrained(target)
            XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                             pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(target)
        elif repo.startswith("facebook/nllb-200"):
            from transformers import M2M100Config, NllbTokenizer

            NllbTokenizer(vocab=_pieces(["<s>", "<pad>", "</s>", "<unk>"]), merges=[]).save_pretrained(target)
            M2M100Config(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12,
                         encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                         decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
                         activation_function="relu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         decoder_start_token_id=2).save_pretrained(target)
        elif repo.startswith("timm/") and "SigLIP2" in repo:
            from transformers import GemmaTokenizer

            GemmaTokenizer(vocab=_pieces(["<pad>", "<eos>", "<bos>", "<unk>"]), merges=[]).save_pretrained(target)
        else:
            raise ValueError(f"no text files known for {repo}")
    return {p.name: p for p in target.iterdir() if p.is_file() and p.suffix in (".json", ".model")}


def build_weights(published: Published, folder: Path) -> Path:
    """Random weights (seeded) for ``published`` in its upstream's file format; reused when already built."""
    import torch

    target = folder / published.repo.replace("/", "--") / published.filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    if published.family == "cn_clip":
        from cn_clip.clip import utils as cn_utils

        model = cn_utils.create_model(cn_utils._MODEL_INFO[published.spec]["struct"])
        # As Chinese-CLIP publishes them: a training checkpoint with DataParallel 'module.' keys, fp16 tensors.
        state = {"module." + k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        payload = {"epoch": 1, "step": 1, "name": published.spec, "state_dict": state}
        tmp = target.with_suffix(".tmp")
        torch.save(payload, tmp)
    else:
        import open_clip

        arch, _, tag = published.spec.partition("/")
        quick = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
        model = open_clip.create_model(arch, force_quick_gelu=quick, pretrained_text=False)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        tmp = target.with_suffix(".tmp")
        if published.filename.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    os.replace(tmp, target)
    return target


def forget(published: Published, hf_cache: str | os.PathLike, clip_cache: str | os.PathLike) -> None:
    """Remove every cached copy of a model (weights and text-tower files), as on a machine that never had it."""
    for repo in (published.repo, *published.text_repos):
        shutil.rmtree(Path(hf_cache) / ("models--" + repo.replace("/", "--")), ignore_errors=True)
    if Path(clip_cache, published.filename).exists():
        os.remove(Path(clip_cache, published.filename))


@contextmanager
def pointed_at(endpoint: str) -> Iterator[None]:
    """Point huggingface_hub at ``endpoint`` as ``HF_ENDPOINT`` would, even when it was imported before."""
    from huggingface_hub import constants

    saved = (os.environ.get("HF_ENDPOINT"), constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE)
    os.environ["HF_ENDPOINT"] = endpoint
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_ENDPOINT", None)
        else:
            os.environ["HF_ENDPOINT"] = saved[0]
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE = saved[1], saved[2]


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory) -> Iterator[LocalHub]:
    """The local hub, running for the whole session, with ``HF_ENDPOINT`` pointing at it."""
    hub = LocalHub().start()
    with pointed_at(hub.url):
        yield hub
    hub.stop()


@pytest.fixture(scope="session")
def hub_files(tmp_path_factory) -> Path:
    """Where generated upstream files live: ``CLIP_RETRIEVAL_TEST_HUB_DIR`` keeps them between runs."""
    kept = os.environ.get("CLIP_RETRIEVAL_TEST_HUB_DIR")
    return Path(kept) if kept else tmp_path_factory.mktemp("hub_files")


def publish(hub: LocalHub, published: Published, folder: Path) -> Path:
    """Build (once) and serve one model's weights and text-tower files under their real repositories and names.

    Building a text tower reads its config through the hub, so the caller forgets the caches afterwards.
    """
    for repo in published.text_repos:
        served = RENAMED.get(repo, repo)
        if served != repo:
            hub.renamed[repo] = served
        for name, path in build_text_repo(repo, folder).items():
            hub.add(served, name, path)
    path = build_weights(published, folder)
    hub.add(published.repo, published.filename, path)
    return path
