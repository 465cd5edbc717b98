"""Encoders: the wrapper gives the library's own normalised embeddings; offline fails fast and clearly."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_retrieval.models import load_encoder, parse_model_name, select_device
from clip_retrieval.core.errors import InputError, ModelUnavailableError

TEXTS = ["草地上的金毛", "a grey cat at the beach", "小猪", "一只在雪地里奔跑的哈士奇，旁边还有一辆红色汽车"]


def _images(encoder, n=3):
    imgs = [Image.new("RGB", (40 + 10 * i, 50), (30 * i, 200 - 40 * i, 90)) for i in range(n)]
    return torch.stack([encoder.preprocess(im) for im in imgs])


def test_open_clip_wrapper_matches_library(tiny_open_clip):
    import open_clip

    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_open_clip}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_open_clip}")
    pixels = _images(encoder)
    with torch.no_grad():
        want_img = F.normalize(model.encode_image(pixels), dim=-1)
        want_txt = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
    assert torch.allclose(encoder.encode_images(pixels), want_img, atol=1e-5)
    got = encoder.encode_texts(TEXTS)
    assert got.shape == (len(TEXTS), encoder.dim)
    assert torch.allclose(got, want_txt, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    assert encoder.languages == frozenset({"zh", "en"})


def test_cn_clip_wrapper_matches_library(tiny_cn_clip):
    from cn_clip.clip import tokenize

    from clip_retrieval.models.cnclip import build_model

    encoder = load_encoder("cn_clip:tiny", str(tiny_cn_clip), "cpu")
    checkpoint = torch.load(tiny_cn_clip, weights_only=True)
    model = build_model(checkpoint["model_info"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    pixels = _images(encoder)
    with torch.no_grad():
        want_img = F.normalize(model.encode_image(pixels), dim=-1)
        want_txt = F.normalize(model.encode_text(tokenize(TEXTS)), dim=-1)
    assert torch.allclose(encoder.encode_images(pixels), want_img, atol=1e-5)
    assert torch.allclose(encoder.encode_texts(TEXTS), want_txt, atol=1e-5)
    assert encoder.languages == frozenset({"zh"})


def test_text_batch_trimming_equals_padded(tiny_open_clip):
    encoder = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    one_by_one = torch.cat([encoder.encode_texts([t]) for t in TEXTS])
    assert torch.allclose(encoder.encode_texts(TEXTS), one_by_one, atol=1e-5)


def test_fingerprint_names_the_weights(tiny_open_clip, tmp_path):
    from clip_retrieval.models.openclip import build_model, save_checkpoint_dir
    from tests.conftest import TINY_OPEN_CLIP

    first = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    again = load_encoder("open_clip:tiny", str(tiny_open_clip), "cpu")
    other_dir = save_checkpoint_dir(build_model(TINY_OPEN_CLIP, seed=1), TINY_OPEN_CLIP, tmp_path / "other")
    other = load_encoder("open_clip:tiny", str(other_dir), "cpu")
    assert (first.name, first.fingerprint) == (again.name, again.fingerprint)
    assert first.fingerprint != other.fingerprint


@pytest.fixture(scope="module")
def rn50():
    """One RN50 (a built-in open_clip architecture) with seeded random weights and its embedding of 金毛,
    shared by the checkpoint-file tests so the 100M-parameter model is built once."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("RN50").eval()
    with torch.no_grad():
        want = F.normalize(model.encode_text(open_clip.get_tokenizer("RN50")(["金毛"])), dim=-1)
    return model, want


def test_open_clip_checkpoint_file(tmp_path, rn50):
    """A single weights file plus a built-in architecture name loads through open_clip's own loader."""
    from safetensors.torch import save_file

    model, want = rn50
    path = tmp_path / "rn50.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    encoder = load_encoder("open_clip:RN50", str(path), "cpu")
    assert torch.allclose(encoder.encode_texts(["金毛"]), want, atol=1e-5)
    assert encoder.languages == frozenset({"en"})


@pytest.mark.parametrize("name", ["open_clip:ViT-B-32/openai", "cn_clip:ViT-B-16"])
def test_offline_download_fails_fast_with_a_way_out(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLIP_RETRIEVAL_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        load_encoder(name, device="cpu")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert name in message and "--checkpoint" in message and "离线" in message
    assert str(tmp_path) in message


def test_offline_cli_one_line_no_traceback(tmp_path, small_collection):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
           "CLIP_RETRIEVAL_OFFLINE": "1", "PYTHONPATH": str(__import__("tests.conftest").conftest.ROOT)}
    proc = subprocess.run([sys.executable, "-m", "clip_retrieval", "extract", "--csv", str(small_collection),
                           "--out", str(tmp_path / "out"), "--quiet"], capture_output=True, text=True, env=env,
                          timeout=120)  # a hang guard only: speed is test_offline_download_fails_fast_with_a_way_out's job
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "open_clip:ViT-B-32/openai" in proc.stderr and "--checkpoint" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_names_are_input_errors():
    for bad in ["", "clip", "foo:bar", "open_clip:"]:
        with pytest.raises(InputError):
            parse_model_name(bad)
    with pytest.raises(InputError, match="no pretrained tag"):
        load_encoder("open_clip:ViT-B-32/nonexistent", device="cpu")
    with pytest.raises(InputError, match="names no weights"):
        load_encoder("open_clip:ViT-B-32", device="cpu")
    with pytest.raises(InputError, match="checkpoint not found"):
        load_encoder("open_clip:ViT-B-32", "/no/such/file.pt", device="cpu")


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda"):
            select_device("cuda")


@pytest.mark.parametrize("suffix", [".pt", pytest.param(".bin", marks=pytest.mark.slow)])
def test_open_clip_pickle_free_state_dict_files(tmp_path, suffix, rn50):
    """.pt/.bin state dicts go through open_clip's loader with weights_only=True (the same path: .bin is slow)."""
    model, want = rn50
    path = tmp_path / f"weights{suffix}"
    torch.save({"state_dict": model.state_dict()}, path)
    encoder = load_encoder("open_clip:RN50", str(path), "cpu")
    assert torch.allclose(encoder.encode_texts(["金毛"]), want, atol=1e-5)


@pytest.mark.slow
def test_cn_clip_official_checkpoint_layout(tmp_path):
    """A checkpoint as Chinese-CLIP publishes it (state_dict with 'module.' keys, no architecture inside)
    is rebuilt from the architecture the model name gives."""
    from cn_clip.clip import tokenize
    from cn_clip.clip import utils as cn_utils

    torch.manual_seed(0)
    model = cn_utils.create_model(cn_utils._MODEL_INFO["RN50"]["struct"]).float().eval()
    path = tmp_path / "clip_cn_rn50.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    encoder = load_encoder("cn_clip:RN50", str(path), "cpu")
    with torch.no_grad():
        want = F.normalize(model.encode_text(tokenize(["雪地里的哈士奇"])), dim=-1)
    assert torch.allclose(encoder.encode_texts(["雪地里的哈士奇"]), want, atol=1e-5)
    assert encoder.dim == 1024 and encoder.name == "cn_clip:RN50"


@pytest.fixture
def tiny_quickgelu_tag(monkeypatch, tmp_path):
    """A small architecture registered in open_clip with a pretrained tag that, like ``openai``, needs QuickGELU,
    its weights placed in the Hugging Face cache as a user who downloaded them has them."""
    import json

    import open_clip
    from open_clip import pretrained as oc_pretrained
    from safetensors.torch import save_file

    from tests.conftest import TINY_OPEN_CLIP
    from tests.hub import put_in_hf_cache

    arch, repo = "tiny-test-arch", "test-org/tiny-quickgelu"
    config = tmp_path / f"{arch}.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config)
    monkeypatch.setitem(oc_pretrained._PRETRAINED, arch, {"oai": {
        "url": "", "hf_hub": f"{repo}/", "quick_gelu": True, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4),
        "interpolation": "bicubic", "resize_mode": "shortest"}})
    torch.manual_seed(3)
    model = open_clip.create_model(arch, force_quick_gelu=True)
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    from huggingface_hub import constants

    put_in_hf_cache(constants.HF_HUB_CACHE, repo, "open_clip_model.safetensors", weights)
    return arch, weights


def test_open_clip_tag_with_cached_weights_builds_the_tags_architecture(tiny_quickgelu_tag):
    """The tag path with weights in the HF cache loads (it crashed with open_clip 3.3), builds QuickGELU as the tag
    says, and applies the tag's preprocessing; ``--checkpoint FILE`` under the same name gives the same model."""
    import open_clip

    arch, weights = tiny_quickgelu_tag
    tagged = load_encoder(f"open_clip:{arch}/oai", device="cpu")
    from_file = load_encoder(f"open_clip:{arch}/oai", str(weights), "cpu")
    pixels = _images(tagged)
    want = {}
    for quick in (True, False):
        model = open_clip.create_model(arch, pretrained=str(weights), force_quick_gelu=quick).eval()
        with torch.no_grad():
            want[quick] = F.normalize(model.encode_text(open_clip.get_tokenizer(arch)(TEXTS)), dim=-1)
    assert not torch.allclose(want[True], want[False], atol=1e-4)  # the activation matters for this model
    for encoder in (tagged, from_file):
        assert torch.allclose(encoder.encode_texts(TEXTS), want[True], atol=1e-5)
        assert tuple(encoder.model.visual.preprocess_cfg["mean"]) == (0.5, 0.4, 0.3)
    assert torch.allclose(tagged.encode_images(pixels), from_file.encode_images(pixels), atol=1e-6)


def test_languages_and_tokenizer_language_come_from_the_text_tower_config():
    """Every documented open_clip name: the languages read from its configured tokenizer agree with the
    catalogue, and only NLLB towers get a source-language code (zho_Hans)."""
    import open_clip

    from clip_retrieval.models import catalog
    from clip_retrieval.models.openclip import languages_of, source_language

    names = [m for m in catalog.MODELS.values() if m.family == "open_clip"]
    assert names
    for m in names:
        model_cfg = open_clip.get_model_config(m.spec.partition("/")[0])
        assert languages_of(model_cfg) == frozenset(m.languages), m.name
        assert source_language(model_cfg) == m.tokenizer_language, m.name
    worldwide = open_clip.get_model_config("ViT-H-14-worldwide")  # MetaCLIP 2 (XLM-V tokenizer)
    assert languages_of(worldwide) == frozenset({"zh", "en"})
    assert languages_of(open_clip.get_model_config("ViT-B-16-SigLIP")) == frozenset({"en"})  # English c4 SigLIP
    assert languages_of({}, ["zh"]) == frozenset({"zh"})  # a checkpoint folder's declaration wins


def test_nllb_tokenizer_marks_texts_as_simplified_chinese(tmp_path):
    """open_clip's set_language does not stick under transformers 5; ours must put zho_Hans first."""
    import open_clip

    from clip_retrieval.models.openclip import NLLB_CHINESE, set_source_language
    from tests.hub import build_text_repo

    files = build_text_repo("facebook/nllb-200-distilled-600M", tmp_path)
    tokenizer = open_clip.tokenizer.HFTokenizer(str(files["tokenizer_config.json"].parent), context_length=16)
    set_source_language(tokenizer, NLLB_CHINESE)
    tokens = tokenizer(["草地上的金毛", "小狗"])
    assert (tokens[:, 0] == tokenizer.tokenizer.convert_tokens_to_ids(NLLB_CHINESE)).all()


def test_openai_torchscript_file_in_the_clip_cache_loads(tiny_quickgelu_tag, monkeypatch, tmp_path):
    """Users of OpenAI's clip package have ``~/.cache/clip/ViT-B-32.pt``, a TorchScript archive that
    ``torch.load(weights_only=True)`` refuses; the tag's URL file and --checkpoint both load it."""
    import open_clip
    from open_clip import pretrained as oc_pretrained

    arch, weights = tiny_quickgelu_tag
    model = open_clip.create_model(arch, pretrained=str(weights), force_quick_gelu=True).eval()
    scripted = tmp_path / "home" / ".cache" / "clip" / "tiny-oai.pt"
    scripted.parent.mkdir(parents=True)
    torch.jit.save(torch.jit.script(model), str(scripted))
    cfg = dict(oc_pretrained._PRETRAINED[arch]["oai"], hf_hub="", url="https://example.invalid/x/tiny-oai.pt")
    monkeypatch.setitem(oc_pretrained._PRETRAINED, arch, {"oai": cfg})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with torch.no_grad():
        want = F.normalize(model.encode_text(open_clip.get_tokenizer(arch)(TEXTS)), dim=-1)
    for encoder in (load_encoder(f"open_clip:{arch}/oai", device="cpu"),
                    load_encoder(f"open_clip:{arch}/oai", str(scripted), "cpu")):
        assert torch.allclose(encoder.encode_texts(TEXTS), want, atol=1e-5)


def test_offline_mode_says_so_in_a_second_without_loading_a_model(tmp_path, monkeypatch):
    """CLIP_RETRIEVAL_OFFLINE with nothing cached: refused before any loader (and so before torch) runs."""
    from clip_retrieval.models import catalog, open_encoder

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLIP_RETRIEVAL_OFFLINE", "1")
    monkeypatch.setattr(catalog.Family, "load", lambda *a: pytest.fail("a model loader ran although offline"))
    for name in ("open_clip:ViT-B-32/openai", "cn_clip:ViT-B-16"):
        start = time.monotonic()
        with pytest.raises(ModelUnavailableError) as info:
            open_encoder(name, device="cpu")
        assert time.monotonic() - start < 1.0
        message = str(info.value)
        assert "offline mode is set" in message and "未尝试联网" in message and "unreachable" not in message
        assert "HF_ENDPOINT=https://hf-mirror.com" in message and "--model demo" in message
    assert "clip_cn_vit-b-16.pt" in message and "CLIP_RETRIEVAL_CN_CLIP_MIRROR" in message
    assert "https://clip-cn-beijing.oss-cn-beijing.aliyuncs.com/checkpoints/clip_cn_vit-b-16.pt" in message
    assert "https://modelscope.cn/models/AI-ModelScope/chinese-clip-vit-base-patch16" in message


def test_offline_message_for_the_default_model_points_to_the_chinese_one(tmp_path, monkeypatch):
    from clip_retrieval.models import open_encoder

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLIP_RETRIEVAL_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as info:
        open_encoder("open_clip:ViT-B-32/openai", device="cpu")
    message = str(info.value)
    assert "reads English only; for Chinese queries fetch cn_clip:ViT-B-16" in message
    assert f"{tmp_path}/.cache/clip/ViT-B-32.pt" in message        # where a file downloaded by hand is found


def test_a_cached_weights_file_is_not_refused_offline(tmp_path, monkeypatch):
    """Preflight refuses only certain absence: OpenAI's file in ~/.cache/clip goes on to the loader."""
    from clip_retrieval.models import weights

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLIP_RETRIEVAL_OFFLINE", "1")
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    (tmp_path / ".cache" / "clip" / "ViT-B-32.pt").write_bytes(b"x")
    weights.preflight("open_clip:ViT-B-32/openai")      # no error: the loader decides
    weights.preflight("open_clip:some-arch/undocumented")


def test_offline_refusal_imports_no_torch(tmp_path):
    code = ("import sys\nfrom clip_retrieval.models import open_encoder\n"
            "try:\n    open_encoder('open_clip:ViT-B-32/openai', device='auto')\n"
            "except Exception as exc:\n    print(type(exc).__name__, 'torch' in sys.modules)\n")
    env = {**__import__("os").environ, "HOME": str(tmp_path), "CLIP_RETRIEVAL_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.strip() == "ModelUnavailableError False", proc.stderr[-2000:]


def test_open_clip_hub_file_names_are_open_clips():
    from open_clip import pretrained as oc_pretrained

    from clip_retrieval.models.weights import OPEN_CLIP_HUB_FILES

    assert OPEN_CLIP_HUB_FILES == (oc_pretrained.HF_SAFE_WEIGHTS_NAME, oc_pretrained.HF_WEIGHTS_NAME)


@pytest.mark.parametrize("name", ["open_clip:RN50", "cn_clip:RN50"])
def test_a_garbage_checkpoint_is_named_as_a_broken_download(tmp_path, name):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"<html>404 Not Found</html>" * 40)       # what a failed download often leaves
    with pytest.raises(InputError) as info:
        load_encoder(name, str(path), device="cpu")
    message = str(info.value)
    assert "not a valid checkpoint (1,040" in message and "download it again" in message
    assert "weights_only=False" not in message and "Re-running" not in message
