"""The layers hold: no module imports from a layer above its own, and no import cycle, lazy imports included.

The contracts are in pyproject.toml ([tool.importlinter]); this runs import-linter on them,
so an upward import fails the build, not a review.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_every_top_level_module_is_in_a_layer():
    """A new module outside the table would slip past the contract if it were not exhaustive."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "exhaustive = true" in text


def test_old_import_paths_give_the_moved_modules():
    """Users' imports of the flat layout keep working for one release: the same module, with a warning."""
    import importlib
    import warnings

    from clip_retrieval.features import store
    from clip_retrieval.models import catalog, onnx

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert importlib.import_module("clip_retrieval.store") is store
        assert importlib.import_module("clip_retrieval.encoders.catalog") is catalog
        assert importlib.import_module("clip_retrieval.runtime.onnx") is onnx
        from clip_retrieval.encoders import load_encoder
    from clip_retrieval.models import load_encoder as new_load_encoder

    assert load_encoder is new_load_encoder
    assert store.__spec__.name == "clip_retrieval.features.store"
    assert any("clip_retrieval.store moved to clip_retrieval.features.store" in str(w.message) for w in caught)
