"""``python -m scripts.check_wheel [--keep DIR]``: build the wheel and use it the way a user would.

A source checkout hides packaging mistakes (the code finds rules/ and the demo model beside
itself). This builds the wheel from a copy of the repository, checks it holds every module
and data file, checks the installed packages satisfy its dependency floors, installs it
into a fresh virtual environment and, from a folder outside the repository, lists models,
extracts the demo collection with the bundled demo model and runs an expanded search.

The fresh environment reuses this environment's third-party packages through a ``.pth``
line added after the wheel is installed with ``--no-deps``, so torch is never downloaded
again and pip never sees (or touches) this environment's packages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "outputs", "__pycache__", "*.egg-info",
                              ".pytest_cache")


class WheelCheckError(Exception):
    """The wheel is incomplete or does not work once installed."""


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WheelCheckError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def build_wheel(work: Path) -> Path:
    """Build from a clean copy, so stale build/ output in the checkout cannot leak into the wheel."""
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(src)]
    try:
        import setuptools
        if int(setuptools.__version__.split(".")[0]) >= 68:
            cmd.insert(5, "--no-build-isolation")  # build with what is installed: no download
    except ImportError:
        pass
    _run(cmd, cwd=work)
    return next((work / "dist").glob("clipsou-*.whl"))


def expected_files() -> set[str]:
    """Every module of the package, and the data it reads at run time."""
    pkg = ROOT / "clip_retrieval"
    files = {p.relative_to(ROOT).as_posix() for p in pkg.rglob("*.py") if "__pycache__" not in p.parts}
    files |= {p.relative_to(ROOT).as_posix() for p in (pkg / "encoders" / "archs").glob("*.json")}
    files |= {p.relative_to(ROOT).as_posix() for p in (pkg / "models" / "demo").iterdir() if p.is_file()}
    files.add("clip_retrieval/rules/expansions.yaml")
    return files


def check_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(expected_files() - names)
    if missing:
        raise WheelCheckError(f"{wheel.name} lacks {', '.join(missing)}; add them to pyproject's packages/package-data")
    shipped = zipfile.ZipFile(wheel).read("clip_retrieval/rules/expansions.yaml")
    if shipped != (ROOT / "rules" / "expansions.yaml").read_bytes():
        raise WheelCheckError("the wheel's rules/expansions.yaml differs from the top-level table")


# Extras that pyproject.toml says to install in an environment of their own (rclip pins its own numpy):
# this environment cannot hold them, so their floors are checked where they are installed.
SEPARATE_ENVIRONMENT_EXTRAS = frozenset({"bench"})


def check_floors(wheel: Path) -> list[str]:
    """Every Requires-Dist of the wheel (extras included, bar the separate-environment ones) is satisfied here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    meta = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist()
                                            if n.endswith(".dist-info/METADATA"))).decode("utf-8")
    checked: list[str] = []
    problems: list[str] = []
    missing: list[str] = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker and not req.marker.evaluate({"extra": ""}) and any(
                req.marker.evaluate({"extra": extra}) for extra in SEPARATE_ENVIRONMENT_EXTRAS):
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(req.name)
            continue
        if not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req} but {installed} is installed (and tested)")
        checked.append(f"{req.name} {installed}")
    if missing:
        problems.append(f"{', '.join(dict.fromkeys(missing))} not installed here, so their floors are untested; "
                        f"run this check where every extra is installed: pip install -e '.[dev]'")
    if problems:
        raise WheelCheckError("dependency floors: " + "; ".join(problems))
    return list(dict.fromkeys(checked))


def fresh_env(work: Path, wheel: Path) -> Path:
    """A new venv holding only the wheel; this environment's packages are appended to its path afterwards."""
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=work)
    target = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work).strip())
    shared = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    (target / "zz_shared_packages.pth").write_text("\n".join(shared) + "\n", encoding="utf-8")
    return python


def use_it(python: Path, work: Path) -> dict:
    """From a folder outside the repository: list models, extract the demo photos, search with expansion."""
    run = work / "elsewhere"
    shutil.copytree(ROOT / "data", run / "photos")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    cli = [str(python), "-m", "clip_retrieval"]
    where = _run([str(python), "-c", "import clip_retrieval; print(clip_retrieval.__file__)"], run, env).strip()
    if not where.startswith(str(work / "venv")):
        raise WheelCheckError(f"the fresh environment imported clip_retrieval from {where}, not from the wheel")
    command = python.parent / ("clipsou.exe" if os.name == "nt" else "clipsou")
    said = _run([str(command), "--version"], run, env).strip() if command.exists() else ""
    if not said.startswith("clipsou "):
        raise WheelCheckError(f"the wheel installs no working `clipsou` command ({command}: {said!r})")
    models = json.loads(_run([*cli, "models", "--json"], run, env))
    _run([str(python), "-c", "from clip_retrieval.models.openclip import arch_config; arch_config('demo-small')"],
         run, env)
    _run([*cli, "extract", "--csv", "photos/captions.csv", "--model", "demo", "--out", "features", "--quiet",
          "--num-workers", "1"], run, env)
    found = json.loads(_run([*cli, "search", "--features", "features", "--query", "金毛", "--json"], run, env))
    if not found["expansions"] or not found["results"]:
        raise WheelCheckError(f"the installed wheel searched without expansions or results: {found}")
    record = json.loads((run / "features" / "search_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    return {"imported_from": where, "models": len(models), "expansions": found["expansions"],
            "top": found["results"][0]["image_path"], "rules": record.get("rules_path") or record.get("rules")}


def check_wheel(work: Path) -> dict:
    """Run every check in ``work``; raises ``WheelCheckError`` naming what is wrong."""
    wheel = build_wheel(work)
    check_contents(wheel)
    floors = check_floors(wheel)
    report = use_it(fresh_env(work, wheel), work)
    return {"wheel": wheel.name, "floors_checked": floors, **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    try:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            report = check_wheel(Path(args.keep))
        else:
            with tempfile.TemporaryDirectory(prefix="clip_retrieval_wheel_") as work:
                report = check_wheel(Path(work))
    except WheelCheckError as exc:
        print(f"check_wheel: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
