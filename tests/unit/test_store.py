"""The features folder: round trip, versioning, the typed manifest, and no damage from a failed write.

Every failure point of a write (each staged file, each rename, a full disk before or
during the write) is shown to leave the previous files as they were.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat

import pytest
import numpy as np
import torch

from clip_retrieval.core import files
from clip_retrieval.features import store
from clip_retrieval.core import ptfile
from clip_retrieval.core.errors import DiskFullError, FeatureStoreError, InputError, ModelMismatchError, NewerFormatError


def _manifest(n: int, source: dict | None = None) -> store.Manifest:
    return store.Manifest(model=store.ModelInfo(name="open_clip:tiny", fingerprint="sha256:abc", dim=4),
                          root="/tmp", source=source or {"csv": "/data/my captions.csv"},
                          images=[{"path": f"{i}.png", "sha256": str(i), "captions": [f"c{i}"]} for i in range(n)])


def _feats(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_round_trip(tmp_path):
    img, txt = _feats(3), _feats(5, 1)
    written = store.save(tmp_path, img, txt, _manifest(3))
    loaded = store.load(tmp_path)
    assert np.array_equal(loaded.image_features, img.numpy()) and np.array_equal(loaded.text_features, txt.numpy())
    assert loaded.manifest == written and isinstance(loaded.manifest, store.Manifest)
    on_disk = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert loaded.manifest.to_json() == on_disk and on_disk["counts"] == {"images": 3, "captions": 0, "skipped": 0}
    assert written.format_version == store.FORMAT_VERSION
    assert loaded.fingerprint == store.tensor_fingerprint(img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_features.pt", "manifest.json", "text_features.pt"]


def test_unknown_manifest_keys_survive_a_round_trip(tmp_path):
    manifest = _manifest(2)
    manifest.extra = {"bad_rows": [{"line": 7}]}
    store.save(tmp_path, _feats(2), _feats(2), manifest)
    assert store.read_manifest(tmp_path).extra == {"bad_rows": [{"line": 7}]}


def test_resolve_path():
    assert store.resolve_path("/r", "a/b.png") == store.Path("/r/a/b.png")
    assert store.resolve_path("/r", "/abs/b.png") == store.Path("/abs/b.png")
    assert _manifest(2).image_file(1) == store.Path("/tmp/1.png")


def _fail_nth(monkeypatch, target, name, n, exc):
    real, calls = getattr(target, name), []

    def failing(*a, **kw):
        calls.append(a)
        if len(calls) == n:
            raise exc
        return real(*a, **kw)

    monkeypatch.setattr(target, name, failing)


@pytest.mark.parametrize("target,name,n", [
    (ptfile, "write", 1),            # writing the image features
    (ptfile, "write", 2),            # writing the caption features
    (store.Path, "write_text", 1),   # writing the manifest
    (store.os, "replace", 1),        # renaming the first file into place
    (store.os, "replace", 2),        # renaming the second (the first is already in place)
    (store.os, "replace", 3),        # renaming the manifest, the last one
])
def test_failed_write_leaves_previous_set_intact(tmp_path, monkeypatch, target, name, n):
    store.save(tmp_path, _feats(3), _feats(3), _manifest(3))
    before = _files(tmp_path)
    _fail_nth(monkeypatch, target, name, n, OSError("boom"))
    with pytest.raises(OSError, match="boom"):
        store.save(tmp_path, _feats(4, 9), _feats(4, 9), _manifest(4))
    monkeypatch.undo()
    assert _files(tmp_path) == before  # no temporary or backup file left either
    assert store.load(tmp_path).image_features.shape[0] == 3


def test_interrupted_first_write_leaves_nothing(tmp_path, monkeypatch):
    _fail_nth(monkeypatch, store.os, "replace", 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        store.save(tmp_path, _feats(3), _feats(3), _manifest(3))
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    store.save(tmp_path, _feats(3), _feats(3), _manifest(3))
    before = _files(tmp_path)
    monkeypatch.setattr(files, "_free_bytes", lambda folder: 1000)
    with pytest.raises(DiskFullError) as err:
        store.save(tmp_path, torch.zeros(5000, 4), torch.zeros(0, 4), _manifest(5000))
    message = str(err.value)
    assert str(tmp_path) in message and "disk full" in message and "previous files are unchanged" in message
    assert re.search(r"needs about \d+\.\d KB \(1\.0 KB free\)", message)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 896 vs 790"),  # torch.save's way
])
def test_disk_filling_up_during_the_write_is_named(tmp_path, monkeypatch, failure):
    store.save(tmp_path, _feats(3), _feats(3), _manifest(3))
    before = _files(tmp_path)
    _fail_nth(monkeypatch, ptfile, "write", 2, failure)
    free = iter([10**9, 300])  # room at the start, nearly nothing once the write failed
    monkeypatch.setattr(files, "_free_bytes", lambda folder: next(free))
    with pytest.raises(DiskFullError, match=rf"{tmp_path}.*about \d+"):
        store.save(tmp_path, _feats(4, 9), _feats(4, 9), _manifest(4))
    monkeypatch.undo()
    assert _files(tmp_path) == before


def test_a_bug_in_a_writer_is_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="bug"):
        store.write_atomic(tmp_path / "x", lambda tmp: (_ for _ in ()).throw(RuntimeError("bug")))
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_never_writes_in_place(tmp_path):
    target = tmp_path / "grid.png"
    target.write_bytes(b"previous")

    def half_then_fail(tmp):
        assert tmp != target and target.read_bytes() == b"previous"
        tmp.write_bytes(b"half")
        raise OSError("disk went away")

    with pytest.raises(OSError):
        store.write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    store.write_atomic(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_files_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        store.save(tmp_path / "f", _feats(2), _feats(2), _manifest(2))
        store.save_expansion_cache(tmp_path / "f", ["a"], _feats(1), "sha256:abc", "r")
        # a library that creates its files 0600 (onnx does for external weights) still gets the umask's mode
        store.write_dir_atomic(tmp_path / "best", lambda tmp: (
            (tmp / "w.bin").write_bytes(b"w"), os.close(os.open(tmp / "private.data", os.O_CREAT | os.O_WRONLY, 0o600))))
    finally:
        os.umask(old)
    for path in [*(tmp_path / "f").iterdir(), *(tmp_path / "best").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE((tmp_path / "best").stat().st_mode) == 0o777 & ~mask
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["private.data", "w.bin"]


def test_write_dir_atomic_keeps_the_previous_folder_when_filling_fails(tmp_path):
    best = tmp_path / "best"
    store.write_dir_atomic(best, lambda tmp: (tmp / "model.bin").write_bytes(b"epoch 1"))

    def crash(tmp):
        (tmp / "model.bin").write_bytes(b"half")
        raise OSError("crash while copying")

    with pytest.raises(OSError):
        store.write_dir_atomic(best, crash)
    assert (best / "model.bin").read_bytes() == b"epoch 1" and [p.name for p in tmp_path.iterdir()] == ["best"]
    store.write_dir_atomic(best, lambda tmp: (tmp / "model.bin").write_bytes(b"epoch 2"))
    assert (best / "model.bin").read_bytes() == b"epoch 2" and [p.name for p in tmp_path.iterdir()] == ["best"]


def test_mixed_generations_are_detected(tmp_path):
    store.save(tmp_path / "a", _feats(3), _feats(3), _manifest(3))
    store.save(tmp_path / "b", _feats(3, 2), _feats(3, 2), _manifest(3))
    (tmp_path / "a" / "image_features.pt").write_bytes((tmp_path / "b" / "image_features.pt").read_bytes())
    with pytest.raises(FeatureStoreError, match="does not belong.*--csv '/data/my captions.csv'"):
        store.load(tmp_path / "a")


def _set_version(folder, version):
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["format_version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_missing_folder_names_the_extract_command(tmp_path):
    with pytest.raises(FeatureStoreError, match="^[^ ]*none: 没有 manifest.json，请先提取特征 / no manifest.json; "
                                                "build features first: clipsou extract"):
        store.load(tmp_path / "none")


def test_newer_format_says_update_not_rebuild(tmp_path):
    store.save(tmp_path, _feats(2), _feats(2), _manifest(2))
    _set_version(tmp_path, store.FORMAT_VERSION + 1)
    with pytest.raises(NewerFormatError, match="update clip_retrieval") as err:
        store.load(tmp_path)
    assert "rebuild" not in str(err.value) and f"format version {store.FORMAT_VERSION + 1}" in str(err.value)


def test_older_format_is_migrated_one_step_at_a_time(tmp_path, monkeypatch):
    store.save(tmp_path, _feats(2), _feats(2), _manifest(2))
    old = store.FORMAT_VERSION - 2
    _set_version(tmp_path, old)
    steps = []

    def step(data):
        steps.append(data["format_version"])
        return data

    monkeypatch.setitem(store.MIGRATIONS, old, step)
    monkeypatch.setitem(store.MIGRATIONS, old + 1, step)
    assert store.load(tmp_path).manifest.format_version == store.FORMAT_VERSION
    assert steps == [old, old + 1]


def test_older_format_without_migration_asks_for_a_rebuild_from_its_source(tmp_path):
    store.save(tmp_path, _feats(2), _feats(2), _manifest(2, {"images": "/photos"}))
    _set_version(tmp_path, store.FORMAT_VERSION - 1)
    with pytest.raises(FeatureStoreError, match=r"too old.*rebuild with: clipsou extract --images /photos "
                                                r"--model open_clip:tiny --out"):
        store.load(tmp_path)


def test_other_model_is_refused_with_rebuild_command(tmp_path):
    store.save(tmp_path, _feats(2), _feats(2), _manifest(2))
    feats = store.load(tmp_path)
    feats.check_model("open_clip:tiny")
    with pytest.raises(ModelMismatchError,
                       match=r"open_clip:tiny.*cn_clip:ViT-B-16.*extract --csv '/data/my captions.csv' "
                             r"--model cn_clip:ViT-B-16"):
        feats.check_model("cn_clip:ViT-B-16")


def test_no_pickle_needed_to_load(tmp_path):
    store.save(tmp_path, _feats(2), _feats(2), _manifest(2))
    payload = torch.load(tmp_path / "image_features.pt", weights_only=True)
    assert set(payload) == {"features", "generation"}


def test_paths_manifest_and_writer_load_without_torch():
    """``store``'s light half (and ``dataset``, which resolves paths through it) must not pull torch in."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "import sys, clip_retrieval.features.store, clip_retrieval.collection.dataset; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("under", ["", "sub"])
def test_a_file_where_the_output_folder_goes_is_named_as_the_users_to_fix(tmp_path, under):
    """extract --out FILE or search --log-dir FILE: exit 2 naming the file in the way, not a FileExistsError."""
    in_the_way = tmp_path / "outputs"
    in_the_way.write_text("a file")
    target = in_the_way / under if under else in_the_way
    with pytest.raises(InputError, match=rf"cannot create folder {re.escape(str(target))}: "
                                         rf"{re.escape(str(in_the_way))} is a file; choose another folder"):
        store.write_atomic(target / "manifest.json", lambda p: p.write_text("{}"))
    assert in_the_way.read_text() == "a file"


def test_no_permission_to_write_is_named(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(args[0]))

    monkeypatch.setattr(store.os, "open", refuse)
    with pytest.raises(InputError, match=rf"no permission to write in {re.escape(str(tmp_path))}; choose a folder"):
        store.write_atomic(tmp_path / "manifest.json", lambda p: p.write_text("{}"))
    assert list(tmp_path.iterdir()) == []


def test_search_log_dir_that_is_a_file_exits_2_in_one_line(tiny_features, tmp_path, cli):
    (tmp_path / "logs").write_text("a file")
    ran = cli("search", "--features", tiny_features, "--log-dir", tmp_path / "logs", "-q", "狗", "--device", "cpu")
    assert ran.returncode == 2 and ran.stderr.count("\n") == 1
    assert f"{tmp_path / 'logs'} is a file; choose another folder" in ran.stderr


def test_pt_files_written_without_torch_are_torch_files(tmp_path):
    """What users get stays a plain torch file: torch reads ours, and we read torch's (memory-mapped)."""
    img = _feats(5).numpy()
    ptfile.write(tmp_path / "ours.pt", {"features": img, "generation": "g"})
    theirs = torch.load(tmp_path / "ours.pt", weights_only=True, mmap=True)
    assert theirs["generation"] == "g" and torch.equal(theirs["features"], torch.from_numpy(img))
    torch.save({"features": torch.from_numpy(img).T, "generation": "h"}, tmp_path / "torch.pt")
    back = ptfile.read(tmp_path / "torch.pt")
    assert back["generation"] == "h" and np.array_equal(back["features"], img.T)
    torch.save({"features": torch.zeros(2, 2, dtype=torch.float16), "generation": "h"}, tmp_path / "half.pt")
    with pytest.raises(Exception, match="unsupported storage|not allowed"):
        ptfile.read(tmp_path / "half.pt")


def test_expansion_cache_is_shared_by_every_folder_of_the_same_weights_and_rules(tmp_path):
    vectors = _feats(2).numpy()
    store.save_expansion_cache(tmp_path / "a", ["a", "b"], vectors, "sha256:m1", "r1")
    texts, got = store.load_expansion_cache(tmp_path / "b", "sha256:m1", "r1")    # another folder
    assert texts == ["a", "b"] and np.array_equal(got, vectors)
    assert store.load_expansion_cache(tmp_path / "b", "sha256:m2", "r1") is None
    assert store.load_expansion_cache(tmp_path / "b", "sha256:m1", "r2") is None
    store._shared_expansion_cache("sha256:m1", "r1").write_bytes(b"damaged")
    assert store.load_expansion_cache(tmp_path / "b", "sha256:m1", "r1") is None
    assert store.load_expansion_cache(tmp_path / "a", "sha256:m1", "r1") is not None
