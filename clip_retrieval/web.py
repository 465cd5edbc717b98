"""The web page: ``clip-retrieval serve``, one tab per search mode, over ``clip_retrieval.api``.

Owns the Gradio layout and turning page events into API calls. Every search is logged
exactly as the CLI logs it. Safety: binds to 127.0.0.1 unless told otherwise; result
images are handed to Gradio as thumbnails it caches itself, so no path on disk is
addressable through the page; uploads land in a private temporary folder and are
deleted after each request and when the server stops.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

from . import api
from .dataset import DEFAULT_MAX_PIXELS, open_user_image, thumbnail
from .errors import UserError
from .expansion import DEFAULT_RULES

log = logging.getLogger(__name__)

THUMB = 256
MAX_UPLOAD = "20mb"


def _gallery(result) -> list:
    return [(thumbnail(h.image_path, THUMB), f"#{h.rank}  {h.score:.3f}  {h.caption}") for h in result.results]


def _expansions(result) -> str:
    if not result.expand:
        return "扩展已关闭 / expansion off"
    lines = [f"⚠️ {result.notice}"] if result.notice else []
    if not result.expansions:
        return "\n\n".join(lines + ["没有扩展 / no expansions"])
    return "\n".join(lines + ["扩展 / expansions:", ""] + [f"- {line}" for line in result.expansion_lines()])


def _probabilities(item: dict) -> dict:
    """A classify entry's probabilities, or its reason as the tab's status line."""
    if "error" in item:
        raise UserError(item["error"])
    return item["probabilities"]


class Page:
    """The handlers, holding the one searcher (and its model) the page was started with."""

    def __init__(self, features: str, rules: str, device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS,
                 dictionary: bool = True):
        self.rules = rules
        self.max_pixels = max_pixels
        self.searcher = api.open_searcher(features, rules=rules, device=device, dictionary=dictionary)

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

    @staticmethod
    def _discard(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

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

    def text_search(self, query: str, expand: bool, k: float):
        import gradio as gr

        try:
            result = api.search(self.searcher, query=query, k=int(k), expand=expand)[0]
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return _expansions(result), _gallery(result)

    def image_search(self, upload, k: float):
        return self._with_upload(upload, lambda p: _gallery(api.search(self.searcher, image=p, k=int(k))[0]), [])

    def image_to_text(self, upload, k: float):
        def work(path):
            result = api.search(self.searcher, image=path, k=int(k), to="text")[0]
            return [[h.rank, round(h.score, 4), h.caption, h.image_path] for h in result.results]
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
        go.click(handler, [upload, option], [status, output])


HISTORY_LAST = 20


def _history_tab(page: Page) -> None:
    """The 日志 / History tab: the latest searches as the ``log --html`` report shows them (thumbnails inline)."""
    import gradio as gr

    from . import logreview, searchlog

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
        with gr.Tab("文搜图 / text to image"):
            with gr.Row():
                query = gr.Textbox(label="查询 / query", placeholder="金毛、灰猫、雪地里的哈士奇…", elem_id="query")
                expand = gr.Checkbox(value=True, label="扩展 / expand", elem_id="expand")
                k = gr.Slider(1, 20, value=6, step=1, label="top-k", elem_id="topk")
            go = gr.Button("搜索 / Search", variant="primary", elem_id="search")
            used = gr.Markdown(elem_id="expansions")
            gallery = gr.Gallery(label="结果 / results", columns=6, elem_id="results")
            go.click(page.text_search, [query, expand, k], [used, gallery])
            query.submit(page.text_search, [query, expand, k], [used, gallery])
        _upload_tab("以图搜图 / image to image", "i2i", "搜索 / Search", page.image_search,
                    lambda: gr.Slider(1, 20, value=6, step=1, label="top-k"),
                    lambda: gr.Gallery(label="相似图片 / similar images", columns=6, elem_id="i2i-results"))
        _upload_tab("以图搜文 / image to text", "i2t", "搜索 / Search", page.image_to_text,
                    lambda: gr.Slider(1, 20, value=5, step=1, label="top-k"),
                    lambda: gr.Dataframe(headers=["rank", "score", "caption", "image"], elem_id="i2t-results"))
        _upload_tab("零样本分类 / zero-shot", "cls", "分类 / Classify", page.classify,
                    lambda: gr.Textbox(label="标签 / labels", value="猫,狗,小猪,兔子,汽车", elem_id="labels"),
                    lambda: gr.Label(label="概率 / probabilities", elem_id="cls-results"))
        _history_tab(page)
    return app


def serve(features: str = "outputs", host: str = "127.0.0.1", port: int = 7860, rules: str | os.PathLike = DEFAULT_RULES,
          device: str = "auto", dictionary: bool = True) -> None:
    """Start the page and block until interrupted; the upload folder is removed on the way out."""
    upload_dir = tempfile.mkdtemp(prefix="clip_retrieval_uploads_")

    def stop(*_):  # a service manager's SIGTERM ends the page as Ctrl-C does, so the cleanup runs
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    os.environ["GRADIO_TEMP_DIR"] = upload_dir
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        app = build(Page(features, rules, device, dictionary=dictionary))
        print(f"serving on http://{host}:{port}  (uploads: {upload_dir}; Ctrl-C to stop)", flush=True)
        app.launch(server_name=host, server_port=port, share=False, show_error=True, quiet=True,
                   max_file_size=MAX_UPLOAD, ssr_mode=False)
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)
