"""A missing optional library says which extra installs it (exit 2), wherever it is first imported."""

from __future__ import annotations

import sys

import pytest

from clip_retrieval.core import extras


@pytest.mark.parametrize("module, extra, argv", [
    ("qdrant_client", "qdrant", ["index", "--backend", "qdrant", "--qdrant-url", "http://127.0.0.1:9"]),
    ("faiss", "ann", ["index", "--backend", "faiss"]),
    ("gradio", "web", ["serve"]),
])
def test_missing_extra_names_the_install_command(cli, tiny_features, monkeypatch, module, extra, argv):
    monkeypatch.setitem(sys.modules, module, None)       # import of it now fails as if it were not installed
    ran = cli(*argv, "--features", tiny_features)
    assert ran.returncode == 2, ran.stderr
    assert f"pip install '{extras.DISTRIBUTION}[{extra}]'" in ran.stderr
    assert "unexpected error" not in ran.stderr and ran.stderr.count("\n") == 1


def test_a_deep_import_of_a_missing_extra_is_named_too(cli, tiny_features, monkeypatch):
    """qdrant_client.models imported before the backend asked for the library: the CLI still names the fix."""
    from clip_retrieval.index import qdrant

    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    monkeypatch.setattr(qdrant, "_client_module", lambda: __import__("qdrant_client.models"))
    ran = cli("index", "--backend", "qdrant", "--qdrant-url", "http://127.0.0.1:9", "--features", tiny_features)
    assert ran.returncode == 2 and f"{extras.DISTRIBUTION}[qdrant]" in ran.stderr


def test_a_library_missing_its_own_dependency_is_not_blamed_on_our_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert extras.missing_extra(ModuleNotFoundError("No module named 'numpy_x'", name="numpy_x")) is None
    with pytest.raises(extras.MissingExtraError, match=r"\[ann\]"):
        extras.require("faiss")


def test_torch_and_torchvision_that_do_not_match_get_the_fix():
    error = RuntimeError("operator torchvision::nms does not exist")
    assert "pip install --force-reinstall torch torchvision" in str(extras.torch_mismatch(error))
    assert extras.torch_mismatch(RuntimeError("CUDA out of memory")) is None
