"""A local model hub for tests: files laid out exactly as the Hugging Face cache holds them.

The cache helpers write files exactly where huggingface_hub puts them
(``models--ORG--NAME/snapshots/COMMIT/FILE`` plus ``refs/main``), so a test can stand in
for a user whose weights are already downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def commit_of(repo_id: str) -> str:
    """A stable 40-hex commit id per repository (the hub's X-Repo-Commit)."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def put_in_hf_cache(cache: str | os.PathLike, repo_id: str, filename: str, source: str | os.PathLike) -> Path:
    """Copy ``source`` into the Hugging Face cache at ``cache`` as ``repo_id/filename`` at revision main."""
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    commit = commit_of(repo_id)
    target = repo / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return target

