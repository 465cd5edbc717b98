"""The wheel, installed into a fresh environment, works from a folder outside the repository."""

from __future__ import annotations

import pytest

from scripts.check_wheel import check_wheel


@pytest.mark.slow
def test_installed_wheel_extracts_and_searches_with_expansion(tmp_path):
    report = check_wheel(tmp_path)
    assert report["imported_from"].startswith(str(tmp_path / "venv"))
    assert report["expansions"] and "golden retriever" in report["expansions"]
    assert report["rules"].endswith("clip_retrieval/rules/expansions.yaml")
    assert "golden_retriever" in report["top"]
