"""The web page: ``clipsou serve``, one tab per search mode, over ``clip_retrieval.api``.

Owns the Gradio layout and turning page events into API calls. Every search is logged
exactly as the CLI logs it. Safety: binds to 127.0.0.1 unless told otherwise; result
images are handed to Gradio as thumbnail files rendered once (atomically) into the
page's private temporary folder, which Gradio copies into its own cache, so no
collection path is addressable through the page; uploads land in that folder too and
are deleted as soon as their request is done (rejected ones and empty leftovers included),
and the folder goes when the server stops.

Why thumbnail files and not PIL images: Gradio rewrites a PIL image's cache file in
place on every request, so 20 concurrent queries showing the same picture truncated the
file under another request that was still sending it ("Too little data for declared
Content-Length"); it copies a file into its cache under a temporary name instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from . import api
from .collection.dataset import DEFAULT_MAX_PIXELS, open_user_image, thumbnail
from .core.errors import UserError
from .query.expansion import DEFAULT_RULES
from .core.files import write_atomic
from .relevance import BANDS, shown

log = logging.getLogger(__name__)

THUMB = 256
MAX_UPLOAD = "20mb"
UPLOAD_TTL_S = 600        # an upload not searched within ten minutes is not going to be
EMPTY_UPLOAD_S = 5        # a zero-byte file this old is a request that never sent its body
SWEEP_EVERY_S = 60


def _band(hit) -> str:
    """The hit's relevance band, as the caption under its thumbnail shows it."""
    return f"  {BANDS[hit.band]}/{hit.band}" if hit.band else ""


def _expansions(result) -> str:
    if not result.expand:
        return "扩展已关闭 / expansion off"
    lines = [f"⚠️ {result.notice}"] if result.notice else []
    if not result.expansions:
        return "\n\n".join(lines + ["没有扩展 / no expansions"])
    return "\n".join(lines + ["扩展 / expansions:", ""] + [f"- {line}" for line in result.expansion_lines()])


def _ocr_caption(hit) -> str:
    """A gallery caption's OCR part: what matched the hit and its line (Gradio shows captions as plain text)."""
    if hit.matched_by:
        return f"\n[{hit.matched_by}] {hit.ocr_line or ''}".rstrip()
    return f"\n{hit.ocr_text}" if hit.ocr_text else ""


def _probabilities(item: dict) -> dict:
    """A classify entry's probabilities, or its reason as the tab's status line."""
    if "error" in item:
        raise UserError(item["error"])
    return item["probabilities"]


class Page:
    """The handlers, holding the one searcher (and its model) the page was started with."""

    def __init__(self, features: str, rules: str, device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                 dictionary: bool = True, work_dir: str | os.PathLike | None = None):
        self.rules = rules
        self.max_pixels = max_pixels
        self.searcher = api.open_searcher(features, rules=rules, device=device, dictionary=dictionary)
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="clip_retrieval_page_"))
        self.thumbs = self.work_dir / "thumbnails"
        self.thumbs.mkdir(parents=True, exist_ok=True)

    # -- serve --watch: the features follow a photo folder, the page follows the features --------
    def follow(self, images: str | os.PathLike, features: str | os.PathLike) -> None:
        """Keep ``features`` current with ``images`` (``api.watcher``) and show each update without a restart."""
        self.features = str(features)
        self.watcher = api.watcher(images, features, encoder=self.searcher.encoder, rules=self.rules,
                                   on_update=self.reload).start()

    def reload(self, status=None) -> None:
        """Open the features as they are now; thumbnails of the old set (named by image number) are not reused."""
        searcher = api.open_searcher(self.features, rules=self.rules, encoder=self.searcher.encoder, dictionary=False)
        searcher.dictionary = self.searcher.dictionary   # read once, at the page's start
        self.thumbs = self.work_dir / f"thumbnails-{searcher.store.manifest.generation[:12]}"
        self.thumbs.mkdir(parents=True, exist_ok=True)
        self.searcher = searcher

    def status_line(self) -> str:
        """When the features were last written and how many photos they hold (the page's header line)."""
        manifest = self.searcher.store.manifest
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(
            (Path(self.searcher.store.folder) / "manifest.json").stat().st_mtime))
        watching = " · 正在监视 / watching for new photos" if getattr(self, "watcher", None) is not None else ""
        return f"{len(manifest.images)} 张照片 / photos · 索引更新于 / index updated {when}{watching}"

    def _thumbnail_file(self, image: int) -> str:
        """Image ``image``'s thumbnail as a file, rendered once; concurrent requests never see it half-written."""
        target = self.thumbs / f"{image}.png"
        if not target.is_file():
            picture = thumbnail(self.searcher.store.manifest.image_file(image), THUMB)
            write_atomic(target, lambda tmp: picture.save(tmp, format="PNG"))
        return str(target)

    def _gallery(self, result, show_all: bool = False) -> list:
        """Thumbnails of the relevant hits (else the closest few; ``show_all``: the whole top-k), captioned
        with rank, score, the file's name, its caption (a folder has no captions), band and OCR match."""
        hits, _ = shown(result.results, result.relevance, show_all)
        return [(self._thumbnail_file(h.index),
                 f"#{h.rank}  {h.score:.3f}  {Path(self._collection_path(h.index)).name}  {h.caption}".rstrip()
                 + _band(h) + _ocr_caption(h)) for h in hits]

    def paths_of(self, gallery: list) -> list[str]:
        """The collection paths of a gallery this page made (its thumbnails are named by image number)."""
        return [self._collection_path(int(Path(thumb).stem)) for thumb, _ in gallery]

    def _collection_path(self, image: int) -> str:
        """An image's path as written in the collection (relative to its root), never the server's own path."""
        return self.searcher.store.manifest.images[image]["path"]

    def _checked_upload(self, upload) -> str:
        """The uploaded file's path, after checking it is an image we will decode (else UserError)."""
        if not upload:
            raise UserError("请先上传图片 / upload an image first")
        path = upload if isinstance(upload, str) else upload.name
        try:
            open_user_image(path, 64, self.max_pixels, what="无法使用这张图片 / cannot use this upload:",
                            shown_as=Path(path).name)
        except UserError:
            self._discard(path)
            raise
        return path

    def _discard(self, path: str) -> None:
        """Delete a finished or rejected upload now, with Gradio's other copies of it and stale leftovers."""
        upload = Path(path)
        try:
            size = upload.stat().st_size
            data = upload.read_bytes() if size <= 64 << 20 else None
        except OSError:
            size, data = -1, None
        upload.unlink(missing_ok=True)
        if upload.resolve().is_relative_to(self.work_dir.resolve()):
            self.sweep(same=(upload.name, size, data))

    def sweep(self, same: tuple[str, int, bytes | None] | None = None, now: float | None = None) -> int:
        """Delete uploads nobody will search any more; returns how many files went.

        Zero-byte files older than a few seconds (uploads that never arrived), files posted but
        never searched for ``UPLOAD_TTL_S``, copies of ``same`` (name, size, bytes) and then-empty
        folders go; thumbnails stay. A file still being written is younger than any of these.
        """
        now = time.time() if now is None else now
        removed = 0
        for folder, _dirs, files in os.walk(self.work_dir, topdown=False):
            here = Path(folder)
            if here == self.thumbs:
                continue
            for name in files:
                other = here / name
                try:
                    st = other.stat()
                    age = now - st.st_mtime
                    stale = (st.st_size == 0 and age > EMPTY_UPLOAD_S) or age > UPLOAD_TTL_S
                    copy = (same is not None and name == same[0] and st.st_size == same[1] and same[2] is not None
                            and other.read_bytes() == same[2])
                    if stale or copy:
                        other.unlink()
                        removed += 1
                except OSError:
                    continue
            if here != self.work_dir:
                try:
                    here.rmdir()   # only succeeds when empty
                except OSError:
                    pass
        return removed

    def start_sweeper(self, every_s: float = SWEEP_EVERY_S) -> threading.Event:
        """Sweep the upload folder in the background every ``every_s``; set the returned event to stop."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(every_s):
                try:
                    self.sweep()
                except OSError as exc:   # a folder vanishing under us must not end the page
                    log.debug("upload sweep: %s", exc)

        threading.Thread(target=run, name="upload-sweeper", daemon=True).start()
        return stop

    def _with_upload(self, upload, work, empty):
        """Run ``work(path)`` on a checked upload; a problem becomes the tab's status line, not a crash."""
        try:
            path = self._checked_upload(upload)
        except UserError as exc:
            return f"⚠️ {exc}", empty
        try:
            return "", work(path)
        except UserError as exc:
            return f"⚠️ {exc}", empty
        finally:
            self._discard(path)

    def text_search(self, query: str, expand: bool, k: float, show_all: bool = False):
        try:
            result = api.search(self.searcher, query=query, k=int(k), expand=expand)[0]
        except UserError as exc:   # an empty query and the like: a line on the page, no server traceback
            return f"⚠️ {exc}", []
        notes = [note.replace("--all", "“全部 / all”") for note in shown(result.results, result.relevance, show_all)[1]]
        return "\n\n".join([_expansions(result), *notes]).strip(), self._gallery(result, show_all)

    def image_search(self, upload, k: float):
        return self._with_upload(upload, lambda p: self._gallery(api.search(self.searcher, image=p, k=int(k))[0]), [])

    def image_to_text(self, upload, k: float):
        def work(path):
            result = api.search(self.searcher, image=path, k=int(k), to="text")[0]
            return [[h.rank, round(h.score, 4), h.caption, self._collection_path(h.index), h.ocr_text or ""]
                    for h in result.results]
        return self._with_upload(upload, work, [])

    def classify(self, upload, labels: str):
        return self._with_upload(
            upload, lambda p: _probabilities(api.classify([p], labels, self.searcher.encoder, rules=self.rules)[0]),
            None)


def _upload_tab(title: str, prefix: str, button: str, handler, make_option, make_output) -> None:
    """One upload tab: file, an option (top-k or labels), button, status line, output; ids start with ``prefix``."""
    import gradio as gr

    with gr.Tab(title):
        upload = gr.File(label="上传图片 / upload an image", file_types=["image"], type="filepath",
                         elem_id=f"{prefix}-upload")
        option = make_option()
        go = gr.Button(button, variant="primary", elem_id=f"{prefix}-go")
        status = gr.Markdown(elem_id=f"{prefix}-status")
        output = make_output()
        paths = getattr(output, "paths", None)   # a gallery with a path box also gets its images' paths
        go.click(handler, [upload, option], [status, output] + ([paths] if paths is not None else []))


def _copyable_paths(page: Page, gallery, prefix: str):
    """Under a gallery: a box with the clicked picture's path in the collection and a copy button.

    The paths ride along in a ``gr.State`` (``gallery.paths``) the search fills, so two people
    using the page at once each see their own results' paths."""
    import gradio as gr

    gallery.paths = gr.State([])
    box = gr.Textbox(label="路径（点击图片显示，相对于图库）/ path, relative to the collection (click a picture)",
                     interactive=False, buttons=["copy"], elem_id=f"{prefix}-path")

    def pick(paths: list[str], evt) -> str:
        return paths[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(paths) else ""

    pick.__annotations__["evt"] = gr.SelectData   # how Gradio knows to pass the event (a real type, not a string)
    gallery.select(pick, [gallery.paths], [box])
    return gallery


HISTORY_LAST = 20


def _history_tab(page: Page) -> None:
    """The 日志 / History tab: the latest searches as the ``log --html`` report shows them (thumbnails inline)."""
    import gradio as gr

    from .logs import review as logreview, searchlog

    def latest(last: float) -> str:
        log_file = Path(page.searcher.store.folder) / searchlog.JSON_LOG
        if not log_file.is_file():
            return "<p>还没有检索记录 / no searches logged yet</p>"
        records = logreview.select(searchlog.read_records(log_file), last=int(last))
        return f"<style>{logreview.STYLE}</style>" + logreview.searches_html(records)

    with gr.Tab("日志 / History") as tab:
        with gr.Row():
            last = gr.Slider(1, 100, value=HISTORY_LAST, step=1, label="最近 / latest searches", elem_id="history-last")
            refresh = gr.Button("刷新 / Refresh", elem_id="history-refresh")
        view = gr.HTML(elem_id="history")
        refresh.click(latest, [last], [view])
        tab.select(latest, [last], [view])


def build(page: Page):
    """The Gradio Blocks for a page."""
    import gradio as gr

    with gr.Blocks(title="clip_retrieval", analytics_enabled=False) as app:
        gr.Markdown(f"## clip_retrieval · 以中文短查询检索图片\n模型 / model: `{page.searcher.store.model}` · "
                    f"{page.searcher.store.image_features.shape[0]} images")
        status = gr.Markdown(page.status_line(), elem_id="index-status")
        gr.Timer(2).tick(page.status_line, None, status)
        with gr.Tab("文搜图 / text to image"):
            with gr.Row():
                query = gr.Textbox(label="查询 / query", placeholder="金毛、灰猫、雪地里的哈士奇…", elem_id="query")
                expand = gr.Checkbox(value=True, label="扩展 / expand", elem_id="expand")
                k = gr.Slider(1, 20, value=6, step=1, label="top-k", elem_id="topk")
                every = gr.Checkbox(value=False, label="全部 / all (也显示低于阈值的 / also below the cutoff)",
                                    elem_id="show-all")
            go = gr.Button("搜索 / Search", variant="primary", elem_id="search")
            used = gr.Markdown(elem_id="expansions")
            gallery = gr.Gallery(label="结果 / results", columns=6, elem_id="results")
            _copyable_paths(page, gallery, "results")

            def text_search(q, e, n, a):
                status, found = page.text_search(q, e, n, a)
                return status, found, page.paths_of(found)

            go.click(text_search, [query, expand, k, every], [used, gallery, gallery.paths])
            query.submit(text_search, [query, expand, k, every], [used, gallery, gallery.paths])

        def image_search(upload, n):
            status, found = page.image_search(upload, n)
            return status, found, page.paths_of(found)

        _upload_tab("以图搜图 / image to image", "i2i", "搜索 / Search", image_search,
                    lambda: gr.Slider(1, 20, value=6, step=1, label="top-k"),
                    lambda: _copyable_paths(page, gr.Gallery(label="相似图片 / similar images", columns=6,
                                                             elem_id="i2i-results"), "i2i-results"))
        _upload_tab("以图搜文 / image to text", "i2t", "搜索 / Search", page.image_to_text,
                    lambda: gr.Slider(1, 20, value=5, step=1, label="top-k"),
                    lambda: gr.Dataframe(headers=["rank", "score", "caption", "image", "text / 图中文字"],
                                         datatype=["number", "number", "str", "str", "str"], elem_id="i2t-results"))
        _upload_tab("零样本分类 / zero-shot", "cls", "分类 / Classify", page.classify,
                    lambda: gr.Textbox(label="标签 / labels", value="猫,狗,小猪,兔子,汽车", elem_id="labels"),
                    lambda: gr.Label(label="概率 / probabilities", elem_id="cls-results"))
        _history_tab(page)
    return app


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another program holds before the page claims to serve on it (Gradio would say
    only "Cannot find empty port" after our banner)."""
    import errno
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise UserError(f"无法在 {host}:{port} 监听 / cannot listen on {host}:{port} ({exc.strerror or exc}); "
                                f"check --host") from exc
            raise UserError(f"端口 {port} 已被占用 / port {port} on {host} is taken by another program; pick another "
                            f"with --port, e.g. --port {port + 1}") from exc


def serve(features: str = "outputs", host: str = "127.0.0.1", port: int = 7860, rules: str | os.PathLike = DEFAULT_RULES,
          device: str = "auto", dictionary: bool = True, watch: str | os.PathLike | None = None) -> None:
    """Start the page and block until interrupted; the upload folder is removed on the way out.

    ``watch``: a photo folder the features follow while the page runs (``Page.follow``)."""
    check_port_free(host, port)
    upload_dir = tempfile.mkdtemp(prefix="clip_retrieval_uploads_")

    def stop(*_):  # a service manager's SIGTERM ends the page as Ctrl-C does, so the cleanup runs
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    os.environ["GRADIO_TEMP_DIR"] = upload_dir
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        if watch is not None and not (Path(features) / "manifest.json").is_file():   # a first extraction
            api.watcher(watch, features, device=device, rules=rules, quiet=False).update()
        page = Page(features, rules, device, dictionary=dictionary, work_dir=upload_dir)
        page.start_sweeper()
        if watch is not None:
            page.follow(watch, features)
        app = build(page)
        print(f"网页已启动 / serving on http://{host}:{port}  (上传文件夹 / uploads: {upload_dir}; "
              f"Ctrl-C 停止 / to stop)", flush=True)
        app.launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True,
                   max_file_size=MAX_UPLOAD, ssr_mode=False)
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)
