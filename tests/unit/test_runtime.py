"""The ONNX Runtime path: same vectors as torch, exported once, only the tower a command needs, no torch to search."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clip_retrieval import api
from clip_retrieval.features import store
from clip_retrieval.core.errors import InputError
from clip_retrieval.models import factory, load_encoder, onnx, open_encoder
from clip_retrieval.models.tokenizer import ClipTokenizer
from clip_retrieval.models.transform import ImageTransform

from tests.conftest import ROOT

RULES = ROOT / "rules" / "expansions.yaml"
TEXTS = ["金毛", "a golden retriever", "a photo of a dog lying on the grass in the park at noon", "x", ""]


def _cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _rule_texts() -> list[str]:
    from clip_retrieval.query.expansion import load_rules

    table = load_rules(RULES)
    return [t for r in table.rules for t in [r.key, *r.aliases, *[p.text for p in r.expansions]]]


def test_tokenizer_gives_open_clips_ids():
    import open_clip

    texts = _rule_texts() + TEXTS + ["word " * 100, "Hello, World! it's 12 &amp; ok"]
    ours = ClipTokenizer(os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz"))
    assert np.array_equal(ours(texts), open_clip.get_tokenizer("ViT-B-32")(texts).numpy())


def test_transform_gives_open_clips_pixels():
    import open_clip

    _, _, reference = open_clip.create_model_and_transforms("ViT-B-32")
    ours = ImageTransform(224, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    rng = np.random.default_rng(0)
    for width, height in [(640, 480), (480, 640), (224, 224), (100, 50), (301, 999)]:
        img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        assert np.abs(ours(img) - reference(img).numpy()).max() < 1e-5


def test_onnx_path_equals_torch_and_exports_once(tiny_open_clip):
    enc = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    lean = open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    assert isinstance(lean, onnx.OnnxEncoder) and lean.fingerprint == enc.fingerprint and lean.dim == enc.dim
    assert _cosines(lean.encode_texts(TEXTS), enc.encode_texts(TEXTS)).min() > 1 - 1e-4
    pixels = torch.randn(3, 3, enc.image_size, enc.image_size, generator=torch.Generator().manual_seed(0))
    assert _cosines(lean.encode_images(pixels.numpy()), enc.encode_images(pixels)).min() > 1 - 1e-4
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    assert np.abs(lean.preprocess(img) - enc.preprocess(img).numpy()).max() < 1e-5
    card = onnx.card_dir(enc.fingerprint) / onnx.CARD_FILE
    stamp = card.stat().st_mtime_ns
    again = open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    assert card.stat().st_mtime_ns == stamp and again.loaded_towers() == []    # no second export, nothing opened
    assert _cosines(again.encode_texts(TEXTS), enc.encode_texts(TEXTS)).min() > 1 - 1e-4   # from *.opt.onnx


def test_threads_asking_at_once_for_a_prefetched_tower_all_get_it(tiny_open_clip, monkeypatch):
    """The web page serves queries in threads; the first few may all find the text tower still opening (a real
    tower takes a few tenths of a second; the tiny one is slowed down to match). It opens once, and none fails."""
    from concurrent.futures import ThreadPoolExecutor
    import threading
    import time

    lean = open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    want = lean.encode_texts(TEXTS)
    real = onnx._session
    opened = []
    monkeypatch.setattr(onnx, "_session", lambda path: (opened.append(path.name), time.sleep(0.3), real(path))[2])
    fresh = onnx.open_exported(lean.fingerprint)
    fresh.tokenize(["x"])                               # so the threads reach the session at once
    fresh.prefetch("text")
    start = threading.Barrier(4)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: (start.wait(), fresh.encode_texts(TEXTS))[1], range(4)))
    assert all(np.array_equal(g, want) for g in got) and fresh.loaded_towers() == ["text"]
    assert opened == ["text.onnx"]


def _weights_layout(graph_path) -> tuple[dict[str, tuple[str, int]], int]:
    """Initializers kept outside the graph (name: file, offset) and the byte size of the largest kept inside."""
    import onnx as onnx_lib
    from onnx import numpy_helper

    graph = onnx_lib.load(str(graph_path), load_external_data=False)
    outside, inside = {}, [0]
    for tensor in graph.graph.initializer:
        if tensor.data_location == onnx_lib.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            outside[tensor.name] = (info["location"], int(info.get("offset", 0)))
        else:
            inside.append(numpy_helper.to_array(tensor).nbytes)
    return outside, max(inside)


def test_each_graph_keeps_its_weights_in_one_mappable_file_beside_it(tiny_open_clip, tmp_path, monkeypatch):
    """Small graphs, weights in ``<tower>.data`` / ``<tower>.opt.data`` (page-aligned, so ORT maps them), umask modes."""
    import stat

    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    old = os.umask(0o027)
    try:
        lean = open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    finally:
        os.umask(old)
    folder = lean.folder
    files = {p.name: p for p in folder.iterdir()}
    want = {f"{t}{kind}" for t in onnx.TOWERS for kind in (".onnx", ".data", ".opt.onnx", ".opt.data")}
    assert want | {"card.json", "vocab.txt.gz"} == set(files)
    assert {n: oct(stat.S_IMODE(p.stat().st_mode)) for n, p in files.items()} == {n: oct(0o640) for n in files}
    for tower in onnx.TOWERS:
        for graph, data in ((f"{tower}.onnx", f"{tower}.data"), (f"{tower}.opt.onnx", f"{tower}.opt.data")):
            outside, largest_inside = _weights_layout(files[graph])
            assert {where for where, _ in outside.values()} == {data} and largest_inside < onnx.EXTERNAL_MIN_BYTES
    embedding = _weights_layout(files["text.opt.onnx"])[0]["clip.token_embedding.weight"]
    assert embedding[1] % 4096 == 0      # ORT copies a tensor it cannot map at a page boundary

    enc = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    for name in ("text.opt.onnx", "visual.opt.onnx"):      # the exported graphs still open on their own
        files[name].unlink()
    fresh = onnx.open_exported(enc.fingerprint)
    assert _cosines(fresh.encode_texts(TEXTS), enc.encode_texts(TEXTS)).min() > 1 - 1e-4


def test_an_optimised_copy_that_does_not_open_gives_way_to_the_exported_graph(tiny_open_clip, tmp_path, monkeypatch,
                                                                              caplog):
    """``*.opt.onnx`` is written by the exporting ONNX Runtime (on the card): one that an older ORT rejects, or
    whose weights file is cut short or gone, logs one line and the plain exported graph gives the same vectors."""
    import onnx as onnx_lib
    import onnxruntime

    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    lean = open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    folder = lean.folder
    assert json.loads((folder / onnx.CARD_FILE).read_text(encoding="utf-8"))["exported_with"]["onnxruntime"] \
        == onnxruntime.__version__
    pixels = np.random.default_rng(0).standard_normal((2, 3, lean.image_size, lean.image_size)).astype(np.float32)
    want_texts, want_pixels = lean.encode_texts(TEXTS), lean.encode_images(pixels)
    fallbacks = lambda: sorted(os.path.basename(r.args[0]) for r in caplog.records if r.msg.startswith("优化图"))

    newer = onnx_lib.load(str(folder / "visual.opt.onnx"), load_external_data=False)
    newer.ir_version = 99                               # what an ORT older than the exporting one sees
    onnx_lib.save_model(newer, str(folder / "visual.opt.onnx"))
    (folder / "text.opt.data").write_bytes(b"")          # offsets now past its end
    with caplog.at_level(logging.WARNING, logger=onnx.__name__):
        fresh = onnx.open_exported(lean.fingerprint)
        assert np.allclose(fresh.encode_texts(TEXTS), want_texts, atol=1e-5)
        assert np.allclose(fresh.encode_images(pixels), want_pixels, atol=1e-5)
    assert fallbacks() == ["text.opt.onnx", "visual.opt.onnx"]

    caplog.clear()
    (folder / "text.opt.data").unlink()
    with caplog.at_level(logging.WARNING, logger=onnx.__name__):
        assert np.allclose(onnx.open_exported(lean.fingerprint).encode_texts(TEXTS), want_texts, atol=1e-5)
    assert fallbacks() == ["text.opt.data"]


def test_an_export_of_the_single_file_layout_is_rebuilt(tiny_open_clip, tmp_path, monkeypatch):
    """Version 1 kept each graph and its weights in one file, which ORT copies onto the heap."""
    import onnx as onnx_lib

    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    lean = open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    folder = lean.folder
    for tower in onnx.TOWERS:
        graph = onnx_lib.load(str(folder / f"{tower}.onnx"))
        for name in (f"{tower}.onnx", f"{tower}.data", f"{tower}.opt.onnx", f"{tower}.opt.data"):
            (folder / name).unlink()
        onnx_lib.save_model(graph, str(folder / f"{tower}.onnx"))
    card = json.loads((folder / onnx.CARD_FILE).read_text(encoding="utf-8"))
    (folder / onnx.CARD_FILE).write_text(json.dumps({**card, "version": 1}), encoding="utf-8")

    again = open_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    assert json.loads((folder / onnx.CARD_FILE).read_text(encoding="utf-8"))["version"] == onnx.CARD_VERSION
    assert all((folder / f"{t}.opt.data").is_file() and (folder / f"{t}.data").is_file() for t in onnx.TOWERS)
    enc = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    assert _cosines(again.encode_texts(TEXTS), enc.encode_texts(TEXTS)).min() > 1 - 1e-4


def test_the_image_tower_is_exported_with_plain_attention_and_the_model_is_given_back(tiny_open_clip, tmp_path,
                                                                                     monkeypatch):
    """nn.MultiheadAttention exports with 8 transposes a block, ours with 5; the torch model keeps its own modules."""
    import onnx as onnx_lib

    monkeypatch.setenv("CLIP_RETRIEVAL_CACHE", str(tmp_path / "cache"))
    enc = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    pixels = torch.randn(2, 3, enc.image_size, enc.image_size, generator=torch.Generator().manual_seed(0))
    before = enc.encode_images(pixels)
    folder = onnx.export(enc)
    blocks = enc.model.visual.transformer.resblocks
    assert all(type(b.attn) is torch.nn.MultiheadAttention for b in blocks)
    assert np.array_equal(np.asarray(enc.encode_images(pixels)), np.asarray(before))
    graph = onnx_lib.load(str(folder / "visual.onnx"), load_external_data=False)
    assert sum(n.op_type == "Transpose" for n in graph.graph.node) <= 5 * len(blocks) + 1
    lean = onnx.open_exported(enc.fingerprint)
    assert _cosines(lean.encode_images(pixels.numpy()), before).min() > 1 - 1e-4


@pytest.mark.slow
@pytest.mark.skipif(shutil.disk_usage(ROOT).free < 12 * 2**30 or  # tmp_path lives beside it on CI runners
                    os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") < 12 * 2**30,
                    reason="needs ~7 GB of disk and ~8 GB of memory for a 2.2 GB tower")
def test_a_tower_over_two_gib_exports_into_the_same_layout(tmp_path):
    """Past protobuf's 2 GiB limit torch writes each weight to a file of its own; the tower still ends up as
    ``<tower>.onnx`` + ``<tower>.data`` (+ the optimised pair) and gives torch's vectors (ViT-H-14 is ~2.5 GB)."""
    rows, width = 540_000, 1024                  # 2.2 GB of fp32
    table = torch.arange(rows, dtype=torch.float32).unsqueeze(1).expand(rows, width).contiguous()

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding.from_pretrained(table)

        def forward(self, tokens):
            return self.table(tokens).sum(1)

    tokens = torch.tensor([[1, 7, rows - 1], [0, 2, 3]])
    onnx._save_tower(Wide().eval(), tokens, tmp_path, "text", "tokens", {0: "batch", 1: "width"})
    want = Wide()(tokens).numpy()
    del table
    assert {p.name for p in tmp_path.iterdir()} == {"text.onnx", "text.data", "text.opt.onnx", "text.opt.data"}
    for graph, data in (("text.onnx", "text.data"), ("text.opt.onnx", "text.opt.data")):
        assert {where for where, _ in _weights_layout(tmp_path / graph)[0].values()} == {data}
    session = onnx._session(tmp_path / "text.onnx")
    assert np.array_equal(session.run(None, {"tokens": tokens.numpy()})[0], want)


def test_accelerators_and_the_switch_keep_torch(tiny_open_clip, monkeypatch):
    monkeypatch.setattr(factory, "_torch_accelerator", lambda: "cuda")       # torch says it has CUDA
    monkeypatch.setattr(factory, "_accelerator_hint", lambda: "NVIDIA driver tools (nvidia-smi)")
    assert factory.placement("auto") == factory.Placement("torch", "cuda", "torch has cuda")
    assert factory.placement("cpu").runtime == "onnxruntime"
    monkeypatch.undo()
    monkeypatch.setenv("CLIP_RETRIEVAL_RUNTIME", "torch")
    assert not isinstance(open_encoder("open_clip:tiny", str(tiny_open_clip), "auto"), onnx.OnnxEncoder)


def test_driver_tools_without_a_usable_gpu_take_onnx_and_say_why(tiny_open_clip, tmp_path, monkeypatch, caplog):
    """A stub nvidia-smi on PATH and this machine's torch (no usable CUDA): the fast path, not torch on the CPU."""
    import torch

    assert not torch.cuda.is_available()
    stub = tmp_path / "bin" / "nvidia-smi"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CLIP_RETRIEVAL_RUNTIME", raising=False)
    with caplog.at_level(logging.INFO, logger="clip_retrieval.models.factory"):
        encoder = open_encoder("open_clip:tiny", str(tiny_open_clip), "auto")
    assert isinstance(encoder, onnx.OnnxEncoder) and encoder.runtime == "onnxruntime"
    assert "NVIDIA driver tools (nvidia-smi) found, but torch cannot use an accelerator" in caplog.text


def test_asking_for_an_absent_accelerator_is_an_input_error():
    with pytest.raises(InputError, match="no CUDA device"):
        factory.placement("cuda")
    with pytest.raises(InputError, match="unknown device"):
        factory.placement("tpu")


def _tower_spy(monkeypatch) -> list[str]:
    opened: list[str] = []
    real = onnx._session

    def spy(path):
        opened.append(path.name.split(".")[0])
        return real(path)

    monkeypatch.setattr(onnx, "_session", spy)
    return opened


def test_update_opens_no_tower_when_nothing_changed_and_only_the_image_tower_for_a_new_photo(
        small_collection, tiny_open_clip, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    shutil.copytree(small_collection.parent / "images", folder)
    out = tmp_path / "f"
    kw = dict(images=folder, model="open_clip:tiny", checkpoint=str(tiny_open_clip), out=out, quiet=True,
              rules=RULES, device="cpu")
    api.extract_features(**kw)
    opened = _tower_spy(monkeypatch)
    result = api.extract_features(update=True, **kw)
    assert opened == [] and result.encoded_images == 0 and result.reused_images == 32
    Image.new("RGB", (64, 64), (10, 200, 30)).save(folder / "new.png")
    result = api.extract_features(update=True, **kw)
    assert opened == ["visual"] and result.encoded_images == 1
    assert store.load(out).image_features.shape[0] == 33


def test_expansion_cache_is_built_once_per_model_not_per_folder(small_collection, tiny_open_clip, tmp_path,
                                                               monkeypatch):
    kw = dict(csv=small_collection, model="open_clip:tiny", checkpoint=str(tiny_open_clip), quiet=True,
              rules=RULES, device="cpu")
    api.extract_features(out=tmp_path / "a", **kw)
    calls = []
    monkeypatch.setattr(api, "build_expansion_cache", lambda *a: calls.append(1))
    api.extract_features(out=tmp_path / "b", **kw)
    api.open_searcher(tmp_path / "b", rules=RULES, device="cpu").search_text("金毛")
    assert calls == []


def test_search_imports_no_torch_and_matches_the_torch_path(tiny_features, tmp_path):
    """A fresh process searches (cached phrase and encoded phrase) without importing torch or open_clip."""
    probe = ("import sys, json; from clip_retrieval import cli; "
             "codes = [cli.main(['search', '--features', sys.argv[1], '-q', q, '--json', '--quiet', "
             "'--rules', sys.argv[2], '--log-dir', sys.argv[3]]) for q in ('金毛', '窗边的台灯')]; "
             "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules, 'open_clip': 'open_clip' in sys.modules}))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", probe, str(tiny_features), str(RULES), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    *results, status = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert status == {"codes": [0, 0], "torch": False, "open_clip": False}
    searcher = api.open_searcher(tiny_features, rules=RULES, device="cpu")
    searcher._accept(load_encoder("open_clip:tiny", searcher.store.manifest.model.checkpoint, "cpu"))
    searcher.use_cache([], np.empty((0, 0), np.float32))     # encode everything with torch
    for got, query in zip(results, ("金毛", "窗边的台灯")):
        want = searcher.search_text(query, k=5)
        assert [r["image_path"] for r in got["results"]] == [h.image_path for h in want.results]
        assert np.allclose([r["score"] for r in got["results"]], [h.score for h in want.results], atol=1e-4)


@pytest.mark.slow
def test_vit_b32_architecture_exports_equal_to_torch(tmp_path):
    """The real default architecture (random weights): both towers within 1e-4 cosine of torch."""
    from clip_retrieval.models.openclip import random_encoder

    enc = random_encoder("ViT-B-32", seed=0)
    onnx.export(enc)
    lean = onnx.open_exported(enc.fingerprint)
    texts = _rule_texts()[:64] + TEXTS
    assert _cosines(lean.encode_texts(texts), enc.encode_texts(texts)).min() > 1 - 1e-4
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert _cosines(lean.encode_images(pixels.numpy()), enc.encode_images(pixels)).min() > 1 - 1e-4


# ---------------------------------------------------------------- Chinese-CLIP on ONNX Runtime

CN_TEXTS = ["金毛", "窗边的台灯", "桌上的咖啡杯 Hello, World!", "café " * 40, "一只金毛在草地上奔跑" * 8, "x", ""]


def test_bert_tokenizer_gives_cn_clips_ids_without_torch():
    """cn_clip's WordPiece ids (rules table, mixed scripts, truncation at 52) from a process that never imports torch."""
    probe = ("import sys, json, os, importlib.util; from clip_retrieval.models.tokenizer import BertTokenizer; "
             "vocab = os.path.join(importlib.util.find_spec('cn_clip').submodule_search_locations[0], 'clip', 'vocab.txt'); "
             "ids = BertTokenizer(vocab)(json.loads(sys.stdin.read())).tolist(); "
             "print(json.dumps({'ids': ids, 'torch': 'torch' in sys.modules}))")
    from cn_clip.clip import tokenize

    texts = _rule_texts() + CN_TEXTS
    done = subprocess.run([sys.executable, "-c", probe], input=json.dumps(texts), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["torch"] is False
    assert np.array_equal(np.asarray(got["ids"]), tokenize(texts).numpy())


def test_squash_transform_gives_cn_clips_pixels():
    from cn_clip.clip import image_transform

    reference = image_transform(224)
    ours = ImageTransform(224, onnx.CN_CLIP_MEAN, onnx.CN_CLIP_STD, resize="squash")
    rng = np.random.default_rng(0)
    for width, height in [(640, 480), (480, 640), (224, 224), (100, 50)]:
        img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        assert np.abs(ours(img) - reference(img).numpy()).max() < 1e-5


def test_cn_clip_runs_on_onnx_equal_to_torch(tiny_cn_clip):
    enc = load_encoder("cn_clip:tiny", str(tiny_cn_clip), "cpu")
    lean = open_encoder("cn_clip:tiny", str(tiny_cn_clip), "cpu")
    assert isinstance(lean, onnx.OnnxEncoder) and lean.fingerprint == enc.fingerprint and lean.dim == enc.dim
    assert lean.context_length == 52 and lean.languages == frozenset({"zh"})
    texts = _rule_texts() + CN_TEXTS
    assert _cosines(lean.encode_texts(texts), enc.encode_texts(texts)).min() > 1 - 1e-4
    pixels = torch.randn(3, 3, enc.image_size, enc.image_size, generator=torch.Generator().manual_seed(0))
    assert _cosines(lean.encode_images(pixels.numpy()), enc.encode_images(pixels)).min() > 1 - 1e-4
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    assert np.abs(lean.preprocess(img) - enc.preprocess(img).numpy()).max() < 1e-5


def test_cn_clip_search_imports_no_torch_and_matches_the_torch_path(tiny_cn_clip, small_collection, tmp_path):
    """Features made with Chinese-CLIP, then a fresh process searches (cached and encoded phrases) without torch."""
    out = tmp_path / "features"
    api.extract_features(csv=small_collection, model="cn_clip:tiny", checkpoint=str(tiny_cn_clip), out=out,
                         num_workers=0, device="cpu", quiet=True, rules=RULES)
    probe = ("import sys, json; from clip_retrieval import cli; "
             "codes = [cli.main(['search', '--features', sys.argv[1], '-q', q, '--json', '--quiet', "
             "'--rules', sys.argv[2], '--log-dir', sys.argv[3]]) for q in ('金毛', '窗边的台灯')]; "
             "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules, 'cn_clip': 'cn_clip' in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", probe, str(out), str(RULES), str(tmp_path / "logs")],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    *results, status = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert status == {"codes": [0, 0], "torch": False, "cn_clip": False}
    searcher = api.open_searcher(out, rules=RULES, device="cpu")
    searcher._accept(load_encoder("cn_clip:tiny", str(tiny_cn_clip), "cpu"))
    searcher.use_cache([], np.empty((0, 0), np.float32))     # encode everything with torch
    for got, query in zip(results, ("金毛", "窗边的台灯")):
        want = searcher.search_text(query, k=5)
        assert [r["image_path"] for r in got["results"]] == [h.image_path for h in want.results]
        assert np.allclose([r["score"] for r in got["results"]], [h.score for h in want.results], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-16", "RN50"])
def test_cn_clip_architectures_export_equal_to_torch(arch, tmp_path):
    """Chinese-CLIP's real architectures (random weights; ViT + RoBERTa-wwm-base, ModifiedResNet + RBT3):
    both towers within 1e-4 cosine of torch."""
    from cn_clip.clip import utils as cn_utils

    torch.manual_seed(0)
    model = cn_utils.create_model(cn_utils._MODEL_INFO[arch]["struct"]).float().eval()
    path = tmp_path / f"{arch}.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    del model
    enc = load_encoder(f"cn_clip:{arch}", str(path), "cpu")
    onnx.export(enc)
    lean = onnx.open_exported(enc.fingerprint)
    texts = _rule_texts()[:64] + CN_TEXTS
    assert _cosines(lean.encode_texts(texts), enc.encode_texts(texts)).min() > 1 - 1e-4
    size = enc.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    assert _cosines(lean.encode_images(pixels.numpy()), enc.encode_images(pixels)).min() > 1 - 1e-4
