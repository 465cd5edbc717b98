"""pyproject.toml matches the code: every import declared, floors installed, every subpackage listed."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}


def _imported_roots(folder: Path) -> set[str]:
    roots = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
    return roots - set(sys.stdlib_module_names) - {"clip_retrieval", "scripts", "benchmarks", "tests", "conftest"}


def _distributions(roots: set[str]) -> dict[str, set[str]]:
    owners = metadata.packages_distributions()
    return {root: {canonicalize_name(d) for d in owners.get(root, [])} for root in roots}


def _declared(reqs) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


@pytest.mark.parametrize("folder, extras", [
    ("clip_retrieval", ["ann", "web", "multilingual", "qdrant", "ray", "heic", "raw", "watch", "ocr"]),
    ("tests", ["ann", "web", "multilingual", "qdrant", "ray", "heic", "raw", "watch", "ocr", "dev"]),
    ("benchmarks", ["ann", "qdrant", "ray"]),
    ("scripts", ["dev"]),
])
def test_every_third_party_import_is_declared(folder, extras):
    declared = _declared(RUNTIME) | {name for extra in extras for name in _declared(EXTRAS[extra])}
    undeclared = {root: dists for root, dists in _distributions(_imported_roots(ROOT / folder)).items()
                  if not dists & declared}
    assert not undeclared, f"imported in {folder}/ but not in pyproject (or its extras {extras}): {undeclared}"


def test_installed_versions_satisfy_every_floor():
    """The floors are what the tests run against or lower, never above it."""
    # the bench extra (rclip) lives in its own environment by design: it pins its own numpy
    for req in RUNTIME + [r for name, reqs in EXTRAS.items() if name != "bench" for r in reqs]:
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req} but {installed} is installed"


def test_every_subpackage_and_data_folder_is_packaged():
    setuptools_cfg = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools_cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "clip_retrieval").rglob("__init__.py")}
    assert found <= listed, f"subpackages missing from [tool.setuptools] packages: {sorted(found - listed)}"
    assert setuptools_cfg["package-dir"]["clip_retrieval.rules"] == "rules"
    for package, patterns in setuptools_cfg["package-data"].items():
        base = ROOT / setuptools_cfg.get("package-dir", {}).get(package, package.replace(".", "/"))
        for pattern in patterns:
            assert list(base.glob(pattern)), f"package-data {package}: {pattern} matches no file under {base}"


def test_floor_check_skips_only_the_extras_meant_for_another_environment(tmp_path):
    """rclip (the bench extra) lives in its own environment, so its absence here must not fail check_wheel;
    any other missing requirement still does."""
    import zipfile

    from scripts.check_wheel import WheelCheckError, check_floors

    def wheel(name: str, requires: list[str]) -> Path:
        path = tmp_path / f"{name}-1-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"{name}-1.dist-info/METADATA",
                       "\n".join(["Metadata-Version: 2.1", f"Name: {name}"] + [f"Requires-Dist: {r}" for r in requires]))
        return path

    requires = ["numpy>=1.0", 'rclip>=3.3; extra == "bench"', 'numpy>=1.0; python_version >= "3.8"']
    assert [c.split()[0] for c in check_floors(wheel("x", requires))] == ["numpy"]
    with pytest.raises(WheelCheckError, match=r"no-such-pkg-xyz not installed here.*pip install -e '\.\[dev\]'") as caught:
        check_floors(wheel("y", requires + ['no-such-pkg-xyz>=1; extra == "dev"', 'no-such-pkg-xyz>=1; extra == "web"']))
    assert str(caught.value).count("no-such-pkg-xyz") == 1
    assert "rclip" not in str(caught.value)
