"""Real model names on the real download path, against a local hub that answers as the real hosts do.

Fast tests: an unreachable hub (nothing listening, or a port that accepts and never answers) fails in
seconds with a message naming the host probed, the repository and file; a download that breaks off
says so and resumes on the next run. Slow tests: every documented name downloads into an empty cache,
extracts and searches, equals the upstream library's own output, and loads again with the hub stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_retrieval import api
from clip_retrieval.models import catalog, load_encoder
from clip_retrieval.core.errors import ModelUnavailableError
from tests.hub import PUBLISHED, SilentPort, closed_port_url, commit_of, forget, pointed_at, publish

FAIL_FAST_S = 10  # the probe waits 3 s; process-wide imports are already done by then


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """A machine that never downloaded anything: fresh ~/.cache/clip; each test forgets its hub repos."""
    from huggingface_hub import constants

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return Path(constants.HF_HUB_CACHE), tmp_path / "home" / ".cache" / "clip"


@pytest.mark.parametrize("name", ["open_clip:ViT-B-32/openai", "cn_clip:ViT-B-16"])
@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_hub_fails_fast_naming_host_repo_and_file(name, kind, empty_caches):
    """The real socket probe, against a loopback port with nothing behind it or one that never answers."""
    silent = SilentPort() if kind == "silent" else None
    endpoint = silent.url if silent else closed_port_url()
    published = PUBLISHED[name]
    forget(published, *empty_caches)
    try:
        with pointed_at(endpoint):
            start = time.monotonic()
            with pytest.raises(ModelUnavailableError) as info:
                load_encoder(name, device="cpu")
            elapsed = time.monotonic() - start
    finally:
        if silent:
            silent.close()
    assert elapsed < FAIL_FAST_S
    message = str(info.value)
    assert f"{endpoint}/{published.repo}/resolve/main/{published.filename}" in message
    assert f"无法连接 {endpoint}" in message and f"{endpoint} is unreachable" in message
    assert "HF_ENDPOINT" in message and "--checkpoint" in message
    if name.startswith("cn_clip"):
        assert "modelscope.cn/models/AI-ModelScope/chinese-clip-vit-base-patch16" in message


@pytest.fixture
def tiny_tag(tmp_path, monkeypatch, empty_caches):
    """A small architecture with a registered hub tag (weights served by the local hub, never cached)."""
    import open_clip
    from open_clip import pretrained as oc_pretrained
    from safetensors.torch import save_file

    from tests.conftest import TINY_OPEN_CLIP

    arch, repo = "tiny-hub-arch", "test-org/tiny-hub"
    config = tmp_path / f"{arch}.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config)
    monkeypatch.setitem(oc_pretrained._PRETRAINED, arch, {"v1": {"url": "", "hf_hub": f"{repo}/"}})
    torch.manual_seed(5)
    model = open_clip.create_model(arch)
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    shutil.rmtree(empty_caches[0] / ("models--" + repo.replace("/", "--")), ignore_errors=True)
    return f"open_clip:{arch}/v1", repo, weights


def test_download_broken_midway_says_so_and_leaves_nothing_half_written(local_hub, tiny_tag, empty_caches):
    name, repo, weights = tiny_tag
    local_hub.add(repo, "open_clip_model.safetensors", weights)
    local_hub.cut_at[weights] = weights.stat().st_size // 2
    try:
        with pytest.raises(ModelUnavailableError) as info:
            load_encoder(name, device="cpu")
    finally:
        del local_hub.cut_at[weights]
    message = str(info.value)
    assert f"{local_hub.url}/{repo}/resolve/main/open_clip_model.safetensors" in message
    assert "重新运行" in message and "rerun the same command" in message
    repo_cache = empty_caches[0] / ("models--" + repo.replace("/", "--"))
    assert not [p for p in repo_cache.rglob("*") if p.is_file() and p.stat().st_size and "refs" not in p.parts]
    encoder = load_encoder(name, device="cpu")  # the rerun downloads it whole
    assert encoder.encode_texts(["小狗"]).shape == (1, 32)


def test_hub_answers_as_huggingface_does(local_hub, tiny_tag, empty_caches):
    """huggingface_hub's own download follows our hub's headers: LFS redirect to another host, 404 twin, commit."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    _, repo, weights = tiny_tag
    local_hub.add(repo, "open_clip_model.safetensors", weights)
    local_hub.requests.clear()
    path = hf_hub_download(repo, "open_clip_model.safetensors")
    assert Path(path).read_bytes() == weights.read_bytes()
    assert f"/snapshots/{commit_of(repo)}/" in path
    assert ("GET", f"/cdn/{local_hub.etag(weights)}") in local_hub.requests  # plain HTTP from the CDN, no Xet
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "open_clip_pytorch_model.bin")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-org/no-such-repo", "x.bin")


# -- every documented name, full size (slow) ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four JPEG photos with Chinese captions (few: full-size models run three times per name on a CPU)."""
    from clip_retrieval.collection.generated import make_collection

    folder = tmp_path_factory.mktemp("photos")
    csv = make_collection(folder, per_pair=1, seed=3, size=96, fmt="jpg")
    lines = csv.read_text(encoding="utf-8").splitlines()
    csv.write_text("\n".join(lines[:1] + lines[1:][::8][:4]) + "\n", encoding="utf-8")
    return csv


def _rows(csv: Path) -> tuple[list[Path], list[str]]:
    from clip_retrieval.collection.dataset import read_captions

    coll = read_captions(csv)
    return [coll.resolve(p) for p in coll.images], list(coll.captions)


def _upstream(published, paths: list[Path], captions: list[str], clip_cache: Path):
    """Image and caption embeddings from the upstream library's own loader on plainly decoded pixels."""
    if published.family == "cn_clip":
        from cn_clip.clip import load_from_name, tokenize

        model, preprocess = load_from_name(published.spec, device="cpu", download_root=str(clip_cache))
        tokens = tokenize(captions)
    else:
        import open_clip

        arch, _, tag = published.spec.partition("/")
        quick = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=tag, force_quick_gelu=quick)
        tokenizer = open_clip.get_tokenizer(arch)
        if "nllb" in arch:  # open_clip's set_language does not stick under transformers 5; src_lang does
            tokenizer.tokenizer.src_lang = "zho_Hans"
        tokens = tokenizer(captions)
        if "nllb" in arch:
            assert (tokens[:, 0] == tokenizer.tokenizer.convert_tokens_to_ids("zho_Hans")).all()
    model.eval()
    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return F.normalize(model.encode_image(pixels), dim=-1), F.normalize(model.encode_text(tokens), dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_documented_name_downloads_searches_equals_upstream_and_reloads_offline(
        name, local_hub, hub_files, empty_caches, photos, tmp_path, monkeypatch):
    from clip_retrieval.features import store

    published = PUBLISHED[name]
    weights = publish(local_hub, published, hub_files)
    hf_cache, clip_cache = empty_caches
    forget(published, hf_cache, clip_cache)
    if name == "cn_clip:RN50":  # one Chinese-CLIP name through the plain-URL mirror setting, one through the hub
        monkeypatch.setenv("CLIP_RETRIEVAL_CN_CLIP_MIRROR", local_hub.url + "/plain")
        local_hub.add_plain(published.filename, weights)
    local_hub.requests.clear()

    out = tmp_path / "features"
    encoder = load_encoder(name, device="cpu")  # the download, into an empty cache
    fetched = local_hub.paths("GET")
    assert (f"/plain/{published.filename}" if name == "cn_clip:RN50" else f"/cdn/{local_hub.etag(weights)}") in fetched
    assert encoder.languages == catalog.languages_for(name)
    api.extract_features(csv=photos, model=name, encoder=encoder, out=out, quiet=True, num_workers=0,
                         exact_decode=True, rules=None)
    searcher = api.open_searcher(out, rules=None, encoder=encoder)
    result, _ = api.search(searcher, "草地上的狗", k=3, expand=False, log_dir=tmp_path)
    assert len(result.results) == 3

    paths, captions = _rows(photos)
    want_img, want_txt = _upstream(published, paths, captions, clip_cache)
    feats = store.load(out)
    assert torch.allclose(torch.from_numpy(np.array(feats.image_features, dtype=np.float32)), want_img, atol=1e-5)
    assert torch.allclose(encoder.encode_texts(captions), want_txt, atol=1e-5)
    fingerprint = encoder.fingerprint
    del encoder, searcher

    local_hub.stop()  # second run: no hub at all, everything from the cache
    try:
        start = time.monotonic()
        again = load_encoder(name, device="cpu")
    finally:
        local_hub.start()
    assert again.fingerprint == fingerprint
    assert torch.allclose(again.encode_texts(captions[:2]), want_txt[:2], atol=1e-5)
    assert time.monotonic() - start < 120
    forget(published, hf_cache, clip_cache)  # gigabytes per name: free the disk for the next one


def test_cn_clip_mirror_setting_is_probed_and_named(empty_caches, monkeypatch):
    """CLIP_RETRIEVAL_CN_CLIP_MIRROR (a plain URL base) replaces the hub for Chinese-CLIP, in the probe and message."""
    published = PUBLISHED["cn_clip:RN50"]
    forget(published, *empty_caches)
    mirror = closed_port_url() + "/checkpoints"
    monkeypatch.setenv("CLIP_RETRIEVAL_CN_CLIP_MIRROR", mirror)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        load_encoder("cn_clip:RN50", device="cpu")
    assert time.monotonic() - start < FAIL_FAST_S
    message = str(info.value)
    assert f"{mirror}/clip_cn_rn50.pt" in message and f"无法连接 {mirror}" in message
    assert "OFA-Sys/chinese-clip-rn50" in message and "modelscope.cn" in message  # the other places it is published
