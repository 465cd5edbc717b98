"""Shared fixtures: small real models built locally and small generated collections.

Nothing here mocks an encoder: the tiny models are real open_clip / Chinese-CLIP
networks with seeded random weights, saved and loaded through the real loading code.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RULES = ROOT / "rules" / "expansions.yaml"

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

TINY_CN_CLIP = {
    "embed_dim": 32, "image_resolution": 32, "vision_layers": 1, "vision_width": 32, "vision_patch_size": 8,
    "vision_head_width": 16,
    "vocab_size": 21128, "text_attention_probs_dropout_prob": 0.0, "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.0, "text_hidden_size": 32, "text_initializer_range": 0.02,
    "text_intermediate_size": 64, "text_max_position_embeddings": 64, "text_num_attention_heads": 2,
    "text_num_hidden_layers": 2, "text_type_vocab_size": 2,
}


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep fingerprint caches and hub lookups inside the test run."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["CLIP_RETRIEVAL_CACHE"] = str(cache)
    os.environ["HF_HOME"] = str(cache / "hf")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory) -> Path:
    """A local-dir open_clip checkpoint (config + safetensors) with seeded random weights."""
    from clip_retrieval.models.openclip import build_model, save_checkpoint_dir

    folder = tmp_path_factory.mktemp("tiny_open_clip")
    return save_checkpoint_dir(build_model(TINY_OPEN_CLIP, seed=0), TINY_OPEN_CLIP, folder, languages=["zh", "en"])


@pytest.fixture(scope="session")
def tiny_cn_clip(tmp_path_factory) -> Path:
    """A Chinese-CLIP .pt checkpoint carrying its own small architecture."""
    from clip_retrieval.models.cnclip import build_model

    torch.manual_seed(0)
    model = build_model(TINY_CN_CLIP)
    path = tmp_path_factory.mktemp("tiny_cn_clip") / "tiny_cn_clip.pt"
    torch.save({"state_dict": model.state_dict(), "model_info": TINY_CN_CLIP}, path)
    return path


@pytest.fixture(scope="session")
def small_collection(tmp_path_factory) -> Path:
    """32 generated images (8 subjects x 4 scenes) with Chinese captions; returns captions.csv."""
    from clip_retrieval.collection.generated import make_collection

    return make_collection(tmp_path_factory.mktemp("collection"), per_pair=1, seed=7, size=64)


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory, tiny_open_clip, small_collection) -> Path:
    """Features of the small collection made with the tiny open_clip model."""
    from clip_retrieval import api

    out = tmp_path_factory.mktemp("features")
    api.extract_features(csv=small_collection, model="open_clip:tiny", checkpoint=str(tiny_open_clip), out=out,
                         num_workers=0, device="cpu", quiet=True)
    return out


@pytest.fixture(scope="session")
def demo_collection(tmp_path_factory) -> Path:
    """The bundled demo data plus one picture indexed twice (``husky_snow_copy.png``), extracted once per
    session with the demo model into ``out/``; returns the folder holding images/, captions.csv and out/.

    Tests that write into ``out`` (logs, indexes) copy it first or pass ``--log-dir``.
    """
    from clip_retrieval import api

    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(ROOT / "data" / "images", root / "images")
    shutil.copy(root / "images" / "husky_snow_00.png", root / "images" / "husky_snow_copy.png")
    rows = (ROOT / "data" / "captions.csv").read_text(encoding="utf-8").rstrip("\n").splitlines()
    rows.append("images/husky_snow_copy.png,雪地里的哈士奇")
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    api.extract_features(csv=root / "captions.csv", model="demo", out=root / "out", quiet=True, num_workers=0,
                         rules=RULES)
    return root


@dataclass
class Ran:
    """What a command printed and returned, in-process or as a subprocess."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli("search", "--query", "金毛")`` runs ``clipsou search --query 金毛`` in this process.

    The CLI's own ``main`` parses, dispatches and maps errors to exit codes exactly as the
    console script does; only the interpreter start and the torch import are saved.
    """
    from clip_retrieval.cli import main

    monkeypatch.chdir(ROOT)

    def call(*args, stdin: str | None = None) -> Ran:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:   # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return call


def run(module: str, *args: str, stdin: str | None = None, cwd: Path = ROOT, env: dict | None = None) -> Ran:
    """``python -m module args`` in a fresh interpreter: for what only a real process shows
    (console entry points, exit status, output of a run that crashes)."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, input=stdin,
                          cwd=cwd, env=env, timeout=300)
    return Ran(proc.returncode, proc.stdout, proc.stderr)


from tests.hub import hub_files, local_hub  # noqa: E402,F401  (the local model hub fixtures)
