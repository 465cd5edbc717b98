"""Writing files so that nothing is ever half-written: the project's one atomic writer.

Owns writing any file or folder (a temporary name, then a rename; the previous files kept
when anything fails, Ctrl-C held while the renames run, the umask's modes, a full disk
reported as ``DiskFullError`` with the folder and the space needed) and creating an output
folder (a file in the way or no permission is an ``InputError``). Every module that writes
uses this; it must not know what the files hold. ``read_json_map`` / ``remember_in_json_map``
are the one small key-value cache on disk (weights fingerprints, the names of exported
models), updated under a file lock so two processes never lose each other's entries.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import stat
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterable

from .errors import DiskFullError, InputError, UserError

log = logging.getLogger(__name__)

# Below this much free space a failed write is taken for a full disk even without ENOSPC
# (torch.save reports one as "RuntimeError: ... unexpected pos").
_NEARLY_FULL = 1 << 20
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _free_bytes(folder: Path) -> int | None:
    """Free space where ``folder`` lives (None when the system cannot say)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _disk_full(folder: Path, needed: int, free: int | None, written: int = 0) -> DiskFullError:
    """The message for a full disk; ``written`` (bytes that fitted) stands in when no estimate was given."""
    if needed:
        need, need_zh = f"about {_human(needed)}", f"约 {_human(needed)}"
    elif written:
        need, need_zh = f"more than {_human(written)}", f"超过 {_human(written)}"
    else:
        need, need_zh = "more space", "更多空间"
    have = f"{_human(free)} free" if free is not None else "no free space left"
    return DiskFullError(
        f"磁盘空间不足：写入 {folder} 需要{need_zh}，原有文件未改动；请清理空间或换一个文件夹 / "
        f"disk full: writing to {folder} needs {need} ({have}); the previous files are unchanged. "
        f"Free some space or choose another folder.")


def _is_disk_full(exc: BaseException, free: int | None) -> bool:
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(exc, (OSError, RuntimeError)) and free is not None and free < _NEARLY_FULL


def _temp_name(final: Path, tag: str = "tmp") -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.{tag}")


@contextlib.contextmanager
def _signals_deferred():
    """Hold Ctrl-C while the renames run, so they happen all together or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *a: received.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _commit(staged: list[tuple[Path, Path]]) -> None:
    """Rename every temporary file over its final name; if one rename fails, put the previous files back."""
    backups: dict[Path, Path] = {}
    done: list[Path] = []
    try:
        if len(staged) > 1:
            for _, final in staged:
                if final.exists():
                    backup = _temp_name(final, "old")
                    try:
                        os.link(final, backup)
                    except OSError:  # no hard links here: the generation check still catches a mixed set
                        continue
                    backups[final] = backup
        for tmp, final in staged:
            os.replace(tmp, final)
            done.append(final)
    except BaseException:
        for final in done:
            with contextlib.suppress(OSError):
                if final in backups:
                    os.replace(backups.pop(final), final)
                else:
                    os.unlink(final)
        raise
    finally:
        for backup in backups.values():
            with contextlib.suppress(OSError):
                os.unlink(backup)


def make_output_folder(folder: str | os.PathLike) -> Path:
    """Create a folder we write into (with its parents); a file in the way or no permission is the user's to fix."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise InputError(f"无法创建文件夹 {folder}：{blocker} 是一个文件；请换一个文件夹 / "
                         f"cannot create folder {folder}: {blocker} is a file; "
                         f"choose another folder or move the file") from exc
    except PermissionError as exc:
        raise _no_permission(folder) from exc
    return folder


def _no_permission(folder: Path) -> InputError:
    return InputError(f"没有写入 {folder} 的权限；请换一个文件夹 / no permission to write in {folder}; "
                      f"choose a folder you can write to")


def write_atomic_set(files: Iterable[tuple[str | os.PathLike, Callable[[Path], None]]], needed_bytes: int = 0) -> None:
    """Write files through ``write(tmp_path)`` each, then rename them all into place together.

    Readers never see half a file, and when anything fails (a full disk, Ctrl-C, a bug)
    the previous files stay as they were and no temporary file is left. ``needed_bytes``
    (an estimate of the total size) lets a full disk be refused before anything is
    written and named in the message. A full disk raises ``DiskFullError``.
    """
    files = [(Path(p), write) for p, write in files]
    folder = files[0][0].parent
    staged: list[tuple[Path, Path]] = []
    try:
        for final, _ in files:
            make_output_folder(final.parent)
        free = _free_bytes(folder)
        if needed_bytes and free is not None and free < needed_bytes:
            raise _disk_full(folder, needed_bytes, free)
        for final, write in files:
            tmp = _temp_name(final)
            # created here, not by mkstemp (always 0600): the umask decides, as for any program's files
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            staged.append((tmp, final))
            write(tmp)
        with _signals_deferred():
            _commit(staged)
    except BaseException as exc:
        free = _free_bytes(folder) if isinstance(exc, Exception) else None
        written = 0
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                written += tmp.stat().st_size
                os.unlink(tmp)
        if not isinstance(exc, DiskFullError) and isinstance(exc, Exception) and _is_disk_full(exc, free):
            raise _disk_full(folder, needed_bytes, free, written) from exc
        if isinstance(exc, PermissionError):
            raise _no_permission(folder) from exc
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], needed_bytes: int = 0) -> None:
    """Write one file through ``write(tmp_path)`` then rename it into place (see ``write_atomic_set``)."""
    write_atomic_set([(path, write)], needed_bytes)


def _give_umask_modes(folder: Path) -> None:
    """Set every file under ``folder`` to the mode the umask gives a new file.

    Libraries that ``fill`` calls may create files 0600 (onnx does for external weights);
    the mode is read from a probe file, since asking ``os.umask`` means changing it.
    """
    probe = folder / f".{uuid.uuid4().hex[:12]}.mode"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    for root, _, names in os.walk(folder):
        for name in names:
            file = Path(root) / name
            if stat.S_IMODE(file.lstat().st_mode) != mode and not file.is_symlink():
                os.chmod(file, mode)


def write_dir_atomic(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Build a folder through ``fill(tmp_dir)``, then swap it in for ``path``.

    The previous folder is renamed aside and removed only once the new one is in place,
    so a failure while filling leaves it untouched. Its files get the umask's mode
    whatever library wrote them.
    """
    path = Path(path)
    make_output_folder(path.parent)
    tmp = _temp_name(path)
    try:
        os.mkdir(tmp)
        fill(tmp)
        _give_umask_modes(tmp)
        with _signals_deferred():
            old = _temp_name(path, "old")
            if path.exists():
                os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                if old.exists():
                    os.replace(old, path)
                raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        free = _free_bytes(path.parent) if isinstance(exc, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, DiskFullError) and isinstance(exc, Exception) and _is_disk_full(exc, free):
            raise _disk_full(path.parent, 0, free) from exc
        raise


def read_json_map(path: str | os.PathLike) -> dict:
    """A small JSON object kept as a cache; missing or damaged reads as empty (it is only a cache)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember_in_json_map(path: str | os.PathLike, key: str, value) -> None:
    """Add one entry to a JSON cache file: locked read-modify-write, written atomically.

    A cache that cannot be written (a read-only or full disk) is logged and skipped: the
    caller computed the value anyway and only pays for it again next time.
    """
    from filelock import FileLock

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            entries = read_json_map(path)
            entries[key] = value
            write_atomic(path, lambda tmp: tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8"))
    except (OSError, UserError) as exc:
        log.debug("cache %s not written: %s", path, exc)
