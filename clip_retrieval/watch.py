"""Keeping a features folder current while its photo folder changes (``clipsou watch``, ``serve --watch``).

Owns noticing that the folder changed (filesystem events through watchdog where it is installed,
and always a periodic look at the folder's listing as the safety net), gathering changes into
batches (a burst of copies becomes one update, not one per file), and running each batch through
the one update function it is given: ``api.watch`` hands it the ``extract --update`` path, whose
atomic write of the whole set means a search running at the same time sees the old set or the
new one, never a mixture. It must not decode images, load models or write features itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .collection.dataset import PHOTO_EXTENSIONS

log = logging.getLogger(__name__)

RESCAN_S = 30.0      # the safety net: a look at the listing this often, events or not
SETTLE_S = 1.0       # a batch starts once the folder has been quiet this long
MAX_WAIT_S = 10.0    # ... or this long after its first change, so a long copy is indexed as it goes


@dataclass
class WatchStatus:
    """What the page shows: when the features last changed and how many photos they hold."""

    updated_at: float | None = None     # time.time() of the last finished update
    images: int = 0
    updates: int = 0                    # updates run since the watcher started
    last_error: str = ""


def listing(folder: Path, exclude: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Each photo file under ``folder`` (hidden entries and ``exclude`` left out) -> (size, mtime_ns).

    Cheap (one ``stat`` a file, nothing read): it only decides whether an update is worth running;
    which files are photos, and what changed in them, is the update path's to decide.
    """
    found: dict[str, tuple[int, int]] = {}
    skip = {p.resolve() for p in exclude}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip]
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in PHOTO_EXTENSIONS:
                continue
            try:
                st = os.stat(here / name)
            except OSError:
                continue
            found[str((here / name).relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return found


class Watcher:
    """Runs ``update`` after the photo folder changes, in batches, one update at a time.

    ``update()`` returns the number of photos the features hold afterwards. ``start`` runs it
    in a thread (the page); ``run`` blocks (the CLI). ``stop`` lets the update in progress finish,
    so Ctrl-C leaves a consistent set. ``on_update(status)`` is called after each update.
    """

    def __init__(self, images: str | os.PathLike, update: Callable[[], int], exclude: tuple[str | os.PathLike, ...] = (),
                 rescan_s: float = RESCAN_S, settle_s: float = SETTLE_S, max_wait_s: float = MAX_WAIT_S,
                 on_update: Callable[[WatchStatus], Any] | None = None, events: bool = True):
        self.images = Path(images).resolve()
        self.exclude = tuple(Path(p).resolve() for p in exclude)
        self.update = update
        self.rescan_s, self.settle_s, self.max_wait_s = rescan_s, settle_s, max_wait_s
        self.on_update = on_update
        self.status = WatchStatus()
        self._events = events
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._first_change: float | None = None
        self._last_change = 0.0
        self._seen: dict[str, tuple[int, int]] | None = None
        self._observer = None
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()       # set while no update runs and none is waiting (tests wait on it)
        self._done = threading.Event()      # run() has returned (a join interrupted by Ctrl-C may not say so)

    # -- noticing changes -------------------------------------------------------------------
    def changed(self, path: str | os.PathLike | None = None) -> None:
        """Note a change (a filesystem event, or anyone who knows of one); the next batch takes it in."""
        if path is not None:
            where = Path(path).resolve()
            if any(where == p or where.is_relative_to(p) for p in self.exclude):
                return   # our own writes into the features folder are not photo changes
        now = time.monotonic()
        if self._first_change is None:
            self._first_change = now
        self._last_change = now
        self.idle.clear()
        self._changed.set()

    def _start_events(self) -> bool:
        """Filesystem events through watchdog, when it is installed; False (rescans only) otherwise."""
        if not self._events:
            return False
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ModuleNotFoundError:
            log.warning("未安装 watchdog，仅定期重新扫描 / watchdog is not installed: changes are found by the rescan "
                        "every %.0f s only; pip install 'clipsou[watch]' for filesystem events", self.rescan_s)
            return False
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                watcher.changed(getattr(event, "dest_path", "") or event.src_path)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.images), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        return True

    def _rescan(self) -> None:
        now = listing(self.images, self.exclude)
        if self._seen is not None and now != self._seen:
            self.changed()
        self._seen = now

    # -- running batches ----------------------------------------------------------------------
    def _due(self) -> bool:
        if self._first_change is None:
            return False
        now = time.monotonic()
        return now - self._last_change >= self.settle_s or now - self._first_change >= self.max_wait_s

    def _run_update(self) -> None:
        self._first_change = None
        self._changed.clear()
        self._seen = listing(self.images, self.exclude)   # what this update sees; later changes start a new batch
        try:
            count = self.update()
        except Exception as exc:   # a bad batch must not end the watcher: the next change tries again
            self.status.last_error = str(exc)
            log.warning("更新失败，下次变动时重试 / update failed, retried at the next change: %s", exc)
            return
        self.status = WatchStatus(updated_at=time.time(), images=count, updates=self.status.updates + 1)
        if self.on_update is not None:
            self.on_update(self.status)

    def run(self, initial: bool = True) -> None:
        """Watch until ``stop`` (or Ctrl-C): one update now (``initial``), then one per batch of changes."""
        events = self._start_events()
        log.info("watching %s (%s, rescan every %.0f s)", self.images, "events" if events else "rescans only",
                 self.rescan_s)
        try:
            if initial:
                self._run_update()
            else:
                self._seen = listing(self.images, self.exclude)
            next_rescan = time.monotonic() + self.rescan_s
            while not self._stop.is_set():
                if not self._changed.is_set() and self._first_change is None:
                    self.idle.set()
                self._changed.wait(timeout=min(0.2, self.settle_s))
                if self._stop.is_set():
                    break
                if time.monotonic() >= next_rescan:
                    self._rescan()
                    next_rescan = time.monotonic() + self.rescan_s
                if self._due():
                    self._run_update()
                    next_rescan = time.monotonic() + self.rescan_s
        finally:
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=5)
            self._done.set()

    def start(self, initial: bool = True) -> Watcher:
        """Run in a daemon thread (the page's)."""
        self._thread = threading.Thread(target=self.run, args=(initial,), name="clipsou-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the update in progress (if any) has written its whole set."""
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            # waited on an event, not only Thread.join: a join that Ctrl-C interrupted can later report a
            # thread still writing as finished, and the process would end under it
            self._done.wait(timeout)
            self._thread.join(timeout)

    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def wait_updates(self, count: int, timeout: float = 30.0) -> bool:
        """Block until ``count`` updates have finished since the start (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while self.status.updates < count:
            if time.monotonic() > deadline or self._done.is_set():
                return False
            time.sleep(0.05)
        return True

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no change is pending and no update runs (for tests and scripts)."""
        return self.idle.wait(timeout)
