"""The model catalogue agrees with the upstream registries it describes, and the CLI reads it."""

from __future__ import annotations

import json
import os

import pytest

from clip_retrieval.cli import build_parser, main
from clip_retrieval.models import catalog, parse_model_name
from clip_retrieval.core.errors import InputError

OPEN_CLIP = [m for m in catalog.MODELS.values() if m.family == "open_clip"]
CN_CLIP = [m for m in catalog.MODELS.values() if m.family == "cn_clip"]


def test_every_open_clip_entry_matches_open_clips_registry():
    import open_clip

    registry = {tuple(pair) for pair in open_clip.list_pretrained()}
    for m in OPEN_CLIP:
        arch, _, tag = m.spec.partition("/")
        assert (arch, tag) in registry, m.name
        assert m.embed_dim == open_clip.get_model_config(arch)["embed_dim"], m.name
        hf_hub = open_clip.get_pretrained_cfg(arch, tag)["hf_hub"].rstrip("/")
        assert m.download == f"hf:{hf_hub}", m.name
        if m.mirror:
            assert m.mirror == open_clip.get_pretrained_cfg(arch, tag)["url"], m.name


@pytest.mark.slow
def test_parameter_counts_match_the_architectures():
    """Recount what can be counted offline: towers whose config needs no hub download."""
    import open_clip

    counted = 0
    for m in OPEN_CLIP:
        arch = m.spec.partition("/")[0]
        if "hf_model_name" in open_clip.get_model_config(arch)["text_cfg"]:
            continue  # XLM-R / NLLB towers read their config from the hub
        model = open_clip.create_model(arch, device="meta")
        assert m.params_m == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.01), m.name
        counted += 1
    assert counted >= 3


@pytest.mark.parametrize("name", sorted(catalog.BUNDLED))
def test_demo_parameter_count_matches_the_bundled_file(name):
    import math

    from safetensors import safe_open

    with safe_open(str(catalog.BUNDLED[name] / "open_clip_model.safetensors"), "pt") as f:
        total = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert catalog.MODELS[name].params_m == pytest.approx(total / 1e6, abs=0.01)


def test_open_clip_languages_follow_the_text_tower():
    """A name reads Chinese exactly when its text tower is not CLIP's English BPE tokenizer."""
    import open_clip

    for m in OPEN_CLIP:
        text_cfg = open_clip.get_model_config(m.spec.partition("/")[0])["text_cfg"]
        assert ("zh" in m.languages) == ("hf_tokenizer_name" in text_cfg), m.name
        assert "en" in m.languages, m.name


def test_nllb_entries_carry_the_tokenizer_code_for_simplified_chinese():
    import open_clip
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    for m in OPEN_CLIP:
        tokenizer = open_clip.get_model_config(m.spec.partition("/")[0])["text_cfg"].get("hf_tokenizer_name", "")
        if "nllb" in tokenizer:
            assert m.tokenizer_language == "zho_Hans" and m.tokenizer_language in FAIRSEQ_LANGUAGE_CODES
        else:
            assert m.tokenizer_language is None, m.name


def test_every_cn_clip_entry_matches_cn_clips_registry():
    from cn_clip.clip import utils as cn_utils

    configs = os.path.join(os.path.dirname(cn_utils.__file__), "model_configs")
    assert {m.spec for m in CN_CLIP} == set(cn_utils._MODELS)
    for m in CN_CLIP:
        repo, filename = cn_utils._MODELS[m.spec]
        assert m.download == f"hf:{cn_utils._HUGGINGFACE_ORG}/{repo}/{filename}"
        assert m.mirror.startswith(f"modelscope:{cn_utils._MODELSCOPE_ORG}/{repo}/{filename}")
        vision = cn_utils._MODEL_INFO[m.spec]["struct"].split("@")[0]
        with open(os.path.join(configs, f"{vision}.json"), encoding="utf-8") as f:
            assert m.embed_dim == json.load(f)["embed_dim"], m.name
        assert m.languages == ("zh",)
        assert [f.benchmark for f in m.zh_retrieval] == ["MUGE", "Flickr30K-CN", "COCO-CN"]


@pytest.mark.parametrize("name", sorted(catalog.BUNDLED))
def test_demo_entry_matches_the_bundled_config(name):
    config = json.loads((catalog.BUNDLED[name] / "open_clip_config.json").read_text(encoding="utf-8"))
    demo = catalog.MODELS[name]
    assert demo.embed_dim == config["model_cfg"]["embed_dim"]
    assert list(demo.languages) == config["languages"]
    assert catalog.demo_download_bytes(name) == sum(p.stat().st_size for p in catalog.BUNDLED[name].iterdir())


def test_every_entry_parses_and_cites_known_sources():
    for m in catalog.MODELS.values():
        family, _ = parse_model_name(m.name)
        assert family == m.family
        for figure in m.zh_retrieval:
            assert figure.source in catalog.SOURCES and 0 < figure.r_at_1 <= 100
        assert m.params_source is None or m.params_source in catalog.SOURCES


def test_models_json_parses_and_lists_the_default_first(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == catalog.DEFAULT_MODEL and rows[0]["default"]
    assert [r["name"] for r in rows if r["default"]] == [catalog.DEFAULT_MODEL]
    assert {r["name"] for r in rows} == set(catalog.MODELS)
    by_name = {r["name"]: r for r in rows}
    assert [f["r@1"] for f in by_name["cn_clip:ViT-B-16"]["zh_text_to_image_r@1"]] == [52.1, 62.7, 62.2]


def test_models_table_names_every_model_and_source(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "语言 / reads" in out and "default" in out
    for name in catalog.MODELS:
        assert name in out
    for source in catalog.SOURCES.values():
        assert source in out


def test_help_and_errors_read_the_families_from_the_catalogue(capsys):
    extract = build_parser()._subparsers._group_actions[0].choices["extract"]
    help_text = next(a for a in extract._actions if "--model" in a.option_strings).help   # unwrapped
    for fam in catalog.FAMILIES.values():
        assert fam.pattern in help_text
    with pytest.raises(InputError) as err:
        parse_model_name("clip:ViT-B-32")
    for fam in catalog.FAMILIES.values():
        assert fam.pattern in str(err.value)


def test_train_refuses_a_family_the_catalogue_marks_untrainable(small_collection, tmp_path, capsys):
    assert not catalog.FAMILIES["cn_clip"].trainable
    code = main(["train", "--csv", str(small_collection), "--model", "cn_clip:RN50", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2
    assert "cn_clip" in err and "open_clip" in err
