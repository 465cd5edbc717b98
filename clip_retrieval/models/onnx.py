"""The ONNX Runtime path: each tower exported once per weights fingerprint, then run without torch.

Owns the exported files and their card (``$CLIP_RETRIEVAL_CACHE/onnx/<fingerprint>/``:
per tower the exported graph ``<tower>.onnx`` and ORT's optimised copy ``<tower>.opt.onnx``,
each a small graph with its weights in one file beside it (``<tower>.data``,
``<tower>.opt.data``), the tokenizer vocabulary and ``card.json`` with what the model needs
at run time), and ``OnnxEncoder``, which speaks the ``Encoder`` interface in
numpy and opens each tower's session only when it is first used, so indexing loads only
the image tower and a query only the text tower. Two families export: open_clip's CLIP
and Chinese-CLIP (``cn_clip``: a ViT or ModifiedResNet image tower, a RoBERTa-style BERT text
tower read at its [CLS] token, cn_clip's WordPiece vocabulary, a squashing resize). Export
needs torch and the family's package; using the files needs neither torch nor open_clip.

Weights sit outside the graph so that ONNX Runtime memory-maps them instead of copying
them onto the heap: a query touches only the rows of the token-embedding table it gathers
(the text tower peaks near half the memory of a single-file graph and opens faster).

The files live in the user cache keyed by the weights fingerprint rather than in the
folder of the weights: hub caches are shared and may be read-only, and a search finds
them from the fingerprint in its manifest without resolving (or importing) open_clip.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..core.cpus import usable_cpus
from ..core.files import read_json_map, remember_in_json_map
from .tokenizer import BertTokenizer, ClipTokenizer, trim_padding
from .transform import FILTERS, ImageTransform

if TYPE_CHECKING:
    from .torch_encoder import TorchEncoder

log = logging.getLogger(__name__)

CARD_FILE = "card.json"
CARD_VERSION = 3   # 2: weights beside each graph (1 was single-file); 3: image tower without MHA transposes
OPSET = 18
TOWERS = ("visual", "text")
EXTERNAL_MIN_BYTES = 1024  # tensors from this size go to the weights file (ORT maps it when offsets are page-aligned)


def cache_root() -> Path:
    """Where exported towers live: ``onnx/`` in the user cache."""
    from ..core.paths import user_cache_dir

    return user_cache_dir("onnx")


def card_dir(fingerprint: str) -> Path:
    return cache_root() / fingerprint.replace("sha256:", "")


def read_card(fingerprint: str) -> dict | None:
    """The card of an exported model, or None when it was never exported (or by another version)."""
    try:
        card = json.loads((card_dir(fingerprint) / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if card.get("version") != CARD_VERSION or card.get("fingerprint") != fingerprint:
        return None
    return card


def _is_cn_clip(model) -> bool:
    try:
        from cn_clip.clip.model import CLIP as CnClip
    except ImportError:
        return False
    return isinstance(model, CnClip)


def unsupported_reason(encoder: "TorchEncoder") -> str | None:
    """Why this torch encoder cannot run on the ONNX path (None when it can)."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    model, tokenizer = encoder.model, encoder._tokenize
    if _is_cn_clip(model):
        return _cn_clip_unsupported_reason(model)
    if not isinstance(model, CLIP):
        return f"{type(model).__name__} is not an open_clip CLIP model nor a Chinese-CLIP model"
    if not _trimmable(model):
        return "the text tower is not a causal open_clip transformer pooled at the end token"
    if not isinstance(tokenizer, SimpleTokenizer) or tokenizer.clean_fn is not _clean_lower or tokenizer.reduction_fn:
        return "the tokenizer is not open_clip's default CLIP tokenizer"
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    if cfg.get("resize_mode", "shortest") != "shortest" or cfg.get("interpolation", "bicubic") not in FILTERS:
        return f"image transform {cfg} is not shortest-side resize"
    return None


def _cn_clip_unsupported_reason(model) -> str | None:
    """Chinese-CLIP runs on ONNX Runtime with its standard towers (flash attention is a CUDA kernel)."""
    from cn_clip.clip.model import ModifiedResNet, VisualTransformer

    if not isinstance(model.visual, (VisualTransformer, ModifiedResNet)):
        return f"the image tower {type(model.visual).__name__} is not Chinese-CLIP's ViT or ModifiedResNet"
    if any(getattr(block, "use_flash_attention", False) for block in model.modules()):
        return "the model was built with flash attention"
    return None


CN_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # cn_clip.clip.utils.image_transform's Normalize
CN_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _transform_of(encoder: "TorchEncoder") -> ImageTransform:
    if _is_cn_clip(encoder.model):
        return ImageTransform(encoder.image_size, CN_CLIP_MEAN, CN_CLIP_STD, "bicubic", resize="squash")
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = getattr(encoder.model.visual, "preprocess_cfg", {}) or {}
    return ImageTransform(encoder.image_size, tuple(cfg.get("mean") or OPENAI_DATASET_MEAN),
                          tuple(cfg.get("std") or OPENAI_DATASET_STD), cfg.get("interpolation") or "bicubic")


def _plain_blocks(transformer) -> bool:
    """A batch-first transformer of open_clip's standard self-attention blocks."""
    from open_clip.transformer import ResidualAttentionBlock

    return transformer.batch_first and all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                                           for b in transformer.resblocks)


def _trimmable(model) -> bool:
    """A causal text tower pooled at the end token, built from open_clip's standard blocks."""
    return (getattr(model, "attn_mask", None) is not None and model.text_pool_type in ("argmax", "eos")
            and _plain_blocks(model.transformer))


def _attention(attn, x, mask=None):
    """``nn.MultiheadAttention`` self-attention over batch-first ``x``, written with shape-free reshapes.

    The TorchScript exporter bakes the sequence length of ``nn.MultiheadAttention`` into its
    reshapes (the text tower needs any width) and surrounds it with 8 transposes and a few
    gathers per block; without them ViT-B-32's image tower runs about 2% faster on ORT.
    """
    import torch

    heads = attn.num_heads
    q, k, v = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(t.shape[0], -1, heads, t.shape[-1] // heads).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)
    weights = torch.softmax(scores + mask if mask is not None else scores, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(x.shape[0], -1, x.shape[-1])
    return attn.out_proj(out)


@contextlib.contextmanager
def _plain_attention(transformer):
    """Run a transformer's blocks through ``_attention`` while the image tower is exported (others as they are)."""
    import torch

    class Plain(torch.nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def forward(self, q, k, v, need_weights=False, attn_mask=None):
            return _attention(self.attn, q, attn_mask), None

    if transformer is None or not _plain_blocks(transformer):
        yield
        return
    originals = [block.attn for block in transformer.resblocks]
    try:
        for block in transformer.resblocks:
            block.attn = Plain(block.attn)
        yield
    finally:
        for block, attn in zip(transformer.resblocks, originals):
            block.attn = attn


def _tower(model, run):
    """An export module over one tower: ``run(model, input)`` as its forward pass (the model as a submodule)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return run(self.clip, x)

    return Tower().eval()


def _text_module(model):
    """The text tower over tokens of any width (padding trimmed at run time, as the torch path does):
    open_clip's ``text_forward`` itself, its attention swapped for the shape-free form while exporting."""
    from .openclip import text_forward

    return _tower(model, text_forward)


def _cn_clip_modules(model):
    """Chinese-CLIP's two towers as export modules: ``encode_image``, and ``encode_text`` over tokens of any
    width (its attention mask comes from the padding, so trimmed padding gives the same vectors)."""
    return (_tower(model, lambda clip, pixels: clip.encode_image(pixels)),
            _tower(model, lambda clip, tokens: clip.encode_text(tokens)))


def _save_tower(module, example, staging: Path, tower: str, input_name: str, dynamic: dict) -> None:
    """Export one tower as ``<tower>.onnx`` + ``<tower>.data``, then let ORT write its optimised copy.

    The copy is saved at the portable ``EXTENDED`` level (``ALL`` adds layout changes that
    are applied again at every load) with its weights in ``<tower>.opt.data``; ORT aligns
    the large tensors there to pages, so a session maps them.

    torch writes into a scratch folder, not into memory: a protobuf message holds at most
    2 GiB, so for bigger towers (open_clip ViT-H-14's image tower is ~2.5 GB in fp32) torch
    puts each weight in a file of its own beside the graph, which needs a path. The graph is
    then loaded with those files and saved again in the layout above.
    """
    import onnx
    import onnxruntime as ort
    import torch

    scratch = staging / "torch-export"
    scratch.mkdir()
    exported = scratch / f"{tower}.onnx"
    # a str: the TorchScript exporter gives external data a location only when ``f`` is a str
    torch.onnx.export(module, (example,), str(exported), input_names=[input_name], output_names=["features"],
                      dynamic_axes={input_name: dynamic, "features": {0: "batch"}}, opset_version=OPSET, dynamo=False)
    graph = onnx.load(str(exported))
    shutil.rmtree(scratch)
    onnx.save_model(graph, str(staging / f"{tower}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{tower}.data", size_threshold=EXTERNAL_MIN_BYTES)
    del graph
    options = _options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(staging / f"{tower}.opt.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{tower}.opt.data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                     str(EXTERNAL_MIN_BYTES))
    ort.InferenceSession(str(staging / f"{tower}.onnx"), sess_options=options, providers=["CPUExecutionProvider"])


def export(encoder: "TorchEncoder") -> Path:
    """Export both towers of a torch open_clip encoder (once per fingerprint); returns the folder."""
    import warnings

    import onnxruntime as ort
    import torch
    import open_clip

    from ..core.files import write_dir_atomic

    reason = unsupported_reason(encoder)
    if reason:
        raise ValueError(f"{encoder.name}: cannot run on ONNX Runtime: {reason}")
    final = card_dir(encoder.fingerprint)
    model = encoder.model.float().eval().to("cpu")
    size = encoder.image_size
    cn_clip = _is_cn_clip(model)

    def fill(staging: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens = torch.zeros(2, 8, dtype=torch.long)
            if cn_clip:
                import cn_clip as cn_clip_package

                visual, text = _cn_clip_modules(model)
                _save_tower(visual, torch.zeros(2, 3, size, size), staging, "visual", "pixels", {0: "batch"})
                tokens[:, 0], tokens[0, 1:3], tokens[1, 1:6], tokens[0, 3], tokens[1, 6] = 101, 5000, 6000, 102, 102
                _save_tower(text, tokens, staging, "text", "tokens", {0: "batch", 1: "width"})
                vocab = Path(cn_clip_package.__file__).parent / "clip" / "vocab.txt"
                tokenizer = {"kind": "bert", "vocab": "vocab.txt"}
                versions = {"cn_clip": _version("cn_clip")}
            else:
                with _plain_attention(getattr(model.visual, "transformer", None)):
                    _save_tower(model.visual, torch.zeros(2, 3, size, size), staging, "visual", "pixels",
                                {0: "batch"})
                tokens[:, 0], tokens[:, 3] = 49406, 49407
                with _plain_attention(model.transformer):
                    _save_tower(_text_module(model), tokens, staging, "text", "tokens", {0: "batch", 1: "width"})
                vocab = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
                tokenizer = {"kind": "clip", "vocab": "vocab.txt.gz"}
                versions = {"open_clip": open_clip.__version__}
        shutil.copy2(vocab, staging / tokenizer["vocab"])
        card = {"version": CARD_VERSION, "name": encoder.name, "fingerprint": encoder.fingerprint,
                "dim": encoder.dim, "languages": sorted(encoder.languages), "logit_scale": encoder.logit_scale,
                "context_length": encoder.context_length, "transform": _transform_of(encoder).to_json(),
                "tokenizer": tokenizer,
                "exported_with": {"torch": torch.__version__, **versions, "opset": OPSET,
                                  "onnxruntime": ort.__version__}}   # the one that wrote *.opt.onnx
        (staging / CARD_FILE).write_text(json.dumps(card, indent=1), encoding="utf-8")

    write_dir_atomic(final, fill)
    model.to(encoder.device)
    log.info("exported %s to %s", encoder.name, final)
    return final


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _options():
    """Session options on the usable cores (``core.cpus``), ORT's own log quiet, pool threads that sleep
    instead of spinning.

    Indexing decodes JPEGs in threads beside the model; ORT's threads spinning between
    operators took that CPU. Measured on 2 cores with ViT-B-32 (under load): 98 ms of CPU per
    640x480 photo instead of 106-123, 124-139 instead of 136-152 per 12-megapixel photo,
    best throughput +6% and +9%; text encoding unchanged.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = usable_cpus()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _session(path: Path):
    """An ONNX Runtime session on the tower at ``path`` (``<tower>.onnx``).

    It opens the optimised copy made at export, which starts about a third faster. That copy
    is written by the ONNX Runtime that exported it (its version is on the card) and may not
    open in an older one, or its weights file may be gone; then the exported graph, the
    portable source it was derived from, is opened instead.
    """
    import onnxruntime as ort

    options = _options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    optimized, weights = path.with_suffix(".opt.onnx"), path.with_suffix(".opt.data")
    if optimized.is_file() and weights.is_file():
        try:
            return ort.InferenceSession(str(optimized), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:   # ORT's errors (Fail, InvalidGraph, ...) derive from Exception only
            problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("优化图无法打开，改用导出图 / %s did not open (%s); using %s", optimized, problem, path.name)
    elif optimized.is_file():
        log.warning("优化图缺少权重文件，改用导出图 / %s is missing; using %s", weights, path.name)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class CpuDevice:
    """Stands in for ``torch.device("cpu")`` where callers only read ``.type``."""

    type = "cpu"

    def __str__(self) -> str:
        return "cpu (onnxruntime)"


class OnnxEncoder:
    """The ``Encoder`` interface over exported towers, in numpy; each session opens on first use."""

    runtime = "onnxruntime"

    def __init__(self, card: dict, folder: Path):
        self.folder = folder
        self.name: str = card["name"]
        self.fingerprint: str = card["fingerprint"]
        self.dim: int = int(card["dim"])
        self.languages = frozenset(card["languages"])
        self.logit_scale = float(card["logit_scale"])
        self.context_length = int(card["context_length"])
        t = card["transform"]
        self.preprocess = ImageTransform(int(t["size"]), tuple(t["mean"]), tuple(t["std"]), t["interpolation"],
                                         t.get("resize", "shortest"))
        self._tokenizer_card = card.get("tokenizer") or {"kind": "clip", "vocab": "vocab.txt.gz"}
        self.image_size = self.preprocess.size
        self.device = CpuDevice()
        self._sessions: dict = {}
        self._pending: dict = {}
        self._opening = {tower: threading.Lock() for tower in TOWERS}   # the web page's threads share one encoder
        self._tokenizer: ClipTokenizer | BertTokenizer | None = None

    @property
    def id(self) -> str:
        return f"{self.name}@{self.fingerprint}"

    def loaded_towers(self) -> list[str]:
        """Which sessions are open (tests check that a command opened only what it needed)."""
        return sorted({*self._sessions, *self._pending})

    def prefetch(self, tower: str) -> None:
        """Start opening a tower's session in a thread (ONNX Runtime builds it without holding the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        with self._opening[tower]:
            if tower in self._sessions or tower in self._pending:
                return
            pool = ThreadPoolExecutor(max_workers=1)
            self._pending[tower] = pool.submit(_session, self.folder / f"{tower}.onnx")
            pool.shutdown(wait=False)

    def _session_of(self, tower: str):
        """The tower's session, opened (or taken from ``prefetch``) once however many threads ask at once."""
        session = self._sessions.get(tower)
        if session is not None:
            return session
        with self._opening[tower]:
            if tower in self._pending:
                self._sessions[tower] = self._pending.pop(tower).result()
            elif tower not in self._sessions:
                self._sessions[tower] = _session(self.folder / f"{tower}.onnx")
            return self._sessions[tower]

    def _run(self, tower: str, feed: np.ndarray) -> np.ndarray:
        session = self._session_of(tower)
        (out,) = session.run(None, {session.get_inputs()[0].name: feed})
        out = np.asarray(out, dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        if self._tokenizer is None:
            kind = BertTokenizer if self._tokenizer_card["kind"] == "bert" else ClipTokenizer
            self._tokenizer = kind(self.folder / self._tokenizer_card["vocab"], self.context_length)
        return self._tokenizer(list(texts))

    def encode_images(self, pixels) -> np.ndarray:
        """Encode a preprocessed batch ``[N, 3, H, W]`` (numpy or a CPU tensor)."""
        pixels = np.ascontiguousarray(np.asarray(pixels), dtype=np.float32)
        if pixels.shape[0] == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return self._run("visual", pixels)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode texts in batches of similar length, each trimmed of the padding its rows share."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        tokens = self.tokenize(texts)
        order = np.argsort((tokens != 0).sum(axis=1), kind="stable")
        out = np.empty((len(order), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._run("text", trim_padding(tokens[rows]))
        return out


def open_exported(fingerprint: str, name: str | None = None) -> OnnxEncoder | None:
    """The exported model with this fingerprint, or None; ``name``: the one the user gave these weights
    (as the torch loader keeps it)."""
    card = read_card(fingerprint)
    if not card:
        return None
    encoder = OnnxEncoder(card, card_dir(fingerprint))
    if name:
        encoder.name = name
    return encoder


NAMES_FILE = "names.json"


def _names_key(name: str, checkpoint: str | None) -> str:
    return f"{name}|{Path(checkpoint).resolve() if checkpoint else ''}"


def weights_fingerprint(name: str, checkpoint: str | None) -> str | None:
    """The fingerprint the loader would give these weights, found without loading (or importing) the model.

    Local weights hash their file or folder (remembered by size and time); hub names use the
    fingerprint recorded when they were last exported.
    """
    from .catalog import BUNDLED
    from .weights import file_fingerprint

    if checkpoint or name in BUNDLED:
        path = Path(checkpoint or BUNDLED[name])
        return file_fingerprint(path) if path.exists() else None
    return read_json_map(cache_root() / NAMES_FILE).get(_names_key(name, checkpoint))


def export_once(encoder: "TorchEncoder", name: str, checkpoint: str | None) -> OnnxEncoder:
    """The ONNX model of a torch encoder's weights: exported the first time, and the name remembered,
    so the next command finds the export from the model name alone (``weights_fingerprint``)."""
    if read_card(encoder.fingerprint) is None:
        log.warning("首次使用，导出 ONNX 模型 / first use: exporting %s to ONNX (once per weights)", name)
        export(encoder)
    remember_in_json_map(cache_root() / NAMES_FILE, _names_key(name, checkpoint), encoder.fingerprint)
    return open_exported(encoder.fingerprint, name)
