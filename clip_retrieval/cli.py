"""The ``clipsou`` command: argument parsing and printing over ``clip_retrieval.api``.

Exit codes: 0 success, 2 bad input or usage (one line on stderr), 1 anything else;
3 partial results: batch search and classify finished the good inputs and list each bad one with
its reason (stderr, and a JSON line with "error"), ``replay`` found records that differ or could not run.
Heavy imports (torch, open_clip) happen inside the subcommands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from . import __version__
from .cli_zh import bilingual
from .core.errors import InputError, UserError
from .core.extras import missing_extra, require, torch_mismatch

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DIFFERENT = 0, 1, 2, 3
EXIT_PARTIAL = EXIT_DIFFERENT   # some inputs failed (listed), the others were done


# What a person who just typed `clipsou` needs next: the two commands, where to pick a model, the exit codes.
FIRST_STEPS = """\
入门 / first steps:
  clipsou extract --images ~/Pictures --model demo   index a folder (demo: bundled, offline, drawings only;
                                                            for photos: --model cn_clip:ViT-B-16, see `models`)
  clipsou search 金毛                                top 5, the query expanded through the rules table
  clipsou search --image photo.jpg                   similar images
  clipsou SUBCOMMAND --help                          every option, with its default

退出码 / exit codes: 0 done; 2 bad input or usage (one line on stderr naming the file or value and the fix;
  a --where-path/--where-caption filter that no image passes is one: nothing is searched);
  3 partial (batch search or classify: the bad inputs are listed; replay: some differ or cannot run); 1 a bug, please report it
  extract with unreadable images: 0, they are skipped and listed (stderr, manifest.json "skipped") / 跳过的图片不影响退出码
  log, log stats with damaged or newer-version lines in the log: 0, each skipped line named on stderr (file, line);
    replay counts them as not replayable (3) / 日志中损坏或来自新版本的行：跳过并在 stderr 指明
"""


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            shown = "on" if action.default else "off"
        else:
            shown = "none" if action.default is None else "%(default)s"
        return f"{text} (default: {shown})"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse's own usage errors keep exit code 2, one line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the model runs (default: cuda, then mps, then cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true", help="log details (and tracebacks) to stderr")


def _features_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", default="outputs", help="features folder made by extract (default: outputs)")


def _rules_arg(p: argparse.ArgumentParser, what: str) -> None:
    from .query.expansion import DEFAULT_RULES

    p.add_argument("--rules", default=str(DEFAULT_RULES),
                   help=f"{what} (default: {DEFAULT_RULES} in the working folder; where there is none, "
                        f"the table bundled with clip_retrieval)")


def _search_options(p: argparse.ArgumentParser) -> None:
    _features_arg(p)
    p.add_argument("--query", "-q", help="text query; without it, read one query per line from stdin")
    p.add_argument("--top-k", "-k", type=int, default=5, help="results per query (default: 5)")
    p.add_argument("--no-expand", action="store_true", help="search the query as typed, without the rules table")
    _rules_arg(p, "expansion table")
    p.add_argument("--no-dict", action="store_true",
                   help="no CC-CEDICT renderings for words the rules lack (default: dictionary on, at half weight)")
    p.add_argument("--json", action="store_true", help="one JSON object per query on stdout")
    p.add_argument("--model", help="refuse unless the features were built with this model")
    p.add_argument("--checkpoint", help="local weights to load instead of the ones the features name")
    p.add_argument("--log-dir", help="where search_log.txt/.jsonl go (default: the features folder)")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    from .models.catalog import DEFAULT_MODEL, model_name_help, trainable_families

    parser = _Parser(prog="clipsou", description="以中文短查询检索图片 / Search images with short Chinese queries.",
                     epilog=FIRST_STEPS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clipsou {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("extract", help="encode a collection's images and captions")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--csv", help="captions file with image_path,caption columns (default: data/captions.csv)")
    src.add_argument("--images", help="index a folder of images instead, subfolders included, no captions "
                                      "(JPEG, PNG, WebP, GIF, BMP, TIFF; hidden files and folders, features "
                                      "folders, the --out folder and grids this tool drew are left out; symbolic "
                                      "links are followed while they stay inside the folder)")
    p.add_argument("--follow-links", action="store_true",
                   help="with --images: also follow symbolic links that lead outside the folder (default: off, "
                        "they are left out and counted)")
    p.add_argument("--model",
                   help=f"model string: {model_name_help()}; `clipsou models` lists them "
                        f"(default: with --update the model of the features in --out, else {DEFAULT_MODEL})")
    p.add_argument("--checkpoint", help="local weights file or folder (offline use; with --update and no --model, "
                                        "the weights that built the features)")
    p.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument("--num-workers", type=int, default=None, help="image decoding processes (default: cores-1, 1 to 4)")
    p.add_argument("--max-pixels", type=int, default=None, help="skip images with more pixels (default: 89 million)")
    _rules_arg(p, "expansion table whose phrasings are pre-encoded beside the features")
    p.add_argument("--update", action="store_true",
                   help="re-encode only new or changed images and captions; drop removed ones")
    p.add_argument("--exact-decode", action="store_true",
                   help="decode JPEGs at full size, as plain PIL does (default: off, draft decoding at reduced "
                        "size, several times faster on phone photos)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="leave out malformed CSV rows (open quotes, wrong column counts, empty cells, missing "
                        "images) and list them in the manifest (default: off, the first one is an error)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="where the images are encoded: local, this process; ray, shards as Ray tasks on a cluster "
                        "(needs pip install 'clipsou[ray]'; images and --out on a path every node sees) "
                        "(default: local)")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="with --engine ray: join the Ray cluster at this address (default: $RAY_ADDRESS, "
                        "else a local Ray started for this run)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --engine ray: shards encoded at once, one per Ray task (default: one per GPU "
                        "when the cluster has GPUs, else one per node)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="images per shard; an interrupted run re-encodes only the shards not finished "
                        "(default: 1000 with --engine ray; local: about 1%% of the images in whole batches, "
                        "at most 1000)")
    p.add_argument("--ocr", action="store_true",
                   help="也识别图片中的文字（截图、发票、车票、招牌），供检索匹配；需 pip install 'clipsou[ocr]' / also read "
                        "the text in the images (screenshots, receipts, tickets, signs) so searches match it; needs "
                        "pip install 'clipsou[ocr]' (default: off; --update of features with text keeps reading it)")
    _common(p)

    p = sub.add_parser("search", help="search the features with a text query, an image, or both")
    p.add_argument("query_text", nargs="?", metavar="QUERY",
                   help="text query, as `clipsou search 金毛`; the same as --query")
    _search_options(p)
    p.add_argument("--exact", action="store_true",
                   help="scan every vector even when index.json names another backend (default: off)")
    p.add_argument("--where-path", metavar="FOLDER",
                   help="only images in this folder and its subfolders: a folder, not a file-name prefix, written "
                        "relative to the collection root (as results show paths), to the working folder, or "
                        "absolute; a folder with no images is an error naming the nearest folders, exit 2 "
                        "(default: all)")
    p.add_argument("--where-caption", metavar="TEXT",
                   help="only images with a caption containing TEXT, case-sensitive; text no caption contains, or "
                        "a collection without captions, is an error, exit 2 (default: all)")
    p.add_argument("--image", help="query image: similar images (itself excluded), or captions with --to text; "
                                   "with --query too, 'this picture, but ...'")
    p.add_argument("--to", default="image", choices=["image", "text"], help="what to return for --image")
    p.add_argument("--text-weight", type=float, default=0.5, help="share of the text in an image+text query")
    p.add_argument("--fuse", action="store_true",
                   help="rank by image and caption features and merge the rankings (reciprocal-rank fusion)")
    p.add_argument("--queries", help="batch: a file with one text query per line (JSON Lines out)")
    p.add_argument("--image-dir", help="batch: every image in a folder is a query (JSON Lines out)")
    p.add_argument("--output", help="batch: write the JSON Lines here instead of stdout")
    p.add_argument("--grid", help="also draw the query and its results into this PNG "
                                  "(batch: one file per query, numbered)")
    p.add_argument("--all", action="store_true",
                   help="show the whole top-k, also hits below the relevance cutoff (default: off, the relevant "
                        "hits and how many more are below the cutoff; --json always gives the whole top-k)")
    ocr = p.add_mutually_exclusive_group()
    ocr.add_argument("--ocr-only", action="store_true",
                     help="只按图中识别出的文字检索（需 extract --ocr），不用画面 / rank by the text read in the images "
                          "alone (needs features made with extract --ocr), not by the picture (default: off; with "
                          "such features the text is fused with the picture ranking)")
    ocr.add_argument("--no-ocr", action="store_true",
                     help="忽略图中文字，只按画面检索 / ignore the text read in the images, rank by the picture alone "
                          "(default: off)")

    p = sub.add_parser("serve", help="the web page: every search mode in a browser")
    _features_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    _rules_arg(p, "expansion table")
    p.add_argument("--no-dict", action="store_true", help="no CC-CEDICT renderings (default: dictionary on)")
    p.add_argument("--watch", metavar="DIR",
                   help="监视这个图片文件夹，新照片无需重启即可检索（同 clipsou watch） / keep --features current with "
                        "this photo folder while the page runs, as clipsou watch does (default: off)")
    _common(p)

    p = sub.add_parser("classify", help="zero-shot classification of images among labels")
    p.add_argument("images", nargs="+", help="image files to label (a whole folder: extract --images, then search)")
    p.add_argument("--labels", required=True, help="comma-separated labels, e.g. 猫,狗,鸟")
    p.add_argument("--model", help="model string (default: the model of --features, else the default model)")
    p.add_argument("--checkpoint", help="local weights file or folder")
    p.add_argument("--features", default="outputs", help="take the model from this features folder")
    _rules_arg(p, "labels and prompt templates come from here")
    p.add_argument("--no-expand", action="store_true", help="use the labels as typed, no templates")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    _common(p)

    p = sub.add_parser("dedup", help="groups of near-duplicate images in the collection")
    _features_arg(p)
    p.add_argument("--threshold", type=float, default=0.95, help="cosine similarity to call two images duplicates")
    p.add_argument("--json", action="store_true", help="one JSON object: {groups: [[{path, similarity}]]}")
    _common(p)

    from .index import BACKENDS
    from .index import qdrant as q

    p = sub.add_parser("index", help="choose the index backend that serves the features (search, serve, eval "
                                     "and replay use it); Qdrant: also re-run after extract --update to sync")
    _features_arg(p)
    p.add_argument("--backend", default="faiss", choices=list(BACKENDS),
                   help="exact scan, a FAISS file, or a Qdrant collection (default: faiss)")
    p.add_argument("--kind", default="auto", choices=["auto", "hnsw", "ivf", "flat"],
                   help="faiss: auto is exact below 20k vectors, HNSW up to 300k, IVF above (default: auto)")
    p.add_argument("--fp16", action="store_true", help="faiss: store vectors as float16, half the memory (default: off)")
    p.add_argument("--qdrant-path", help=f"qdrant: 本地索引文件夹，Qdrant Edge 引擎 / a local index in this folder, on "
                                         f"Qdrant's engine in-process (Qdrant Edge) (default: FEATURES/{q.LOCAL_FOLDER})")
    p.add_argument("--qdrant-url", help=f"qdrant: a server or cluster, e.g. http://localhost:6333; its API key is read "
                                        f"from ${q.API_KEY_ENV} (default: local mode)")
    p.add_argument("--collection", default=q.DEFAULT_COLLECTION,
                   help=f"qdrant: collection name (default: {q.DEFAULT_COLLECTION})")
    p.add_argument("--shards", type=int, help="qdrant: shards of a new collection (default: the server's, 1)")
    p.add_argument("--replicas", type=int, help="qdrant: replication factor of a new collection (default: the server's, 1)")
    p.add_argument("--hnsw-m", type=int, default=q.HNSW_M, help=f"qdrant: HNSW links per node (default: {q.HNSW_M})")
    p.add_argument("--hnsw-ef-construct", type=int, default=q.HNSW_EF_CONSTRUCT,
                   help=f"qdrant: HNSW build breadth (default: {q.HNSW_EF_CONSTRUCT})")
    p.add_argument("--hnsw-ef", type=int, default=q.HNSW_EF,
                   help=f"qdrant: HNSW search breadth, higher is more exact and slower (default: {q.HNSW_EF})")
    p.add_argument("--recreate", action="store_true",
                   help="qdrant: 全部重建 / rebuild from every point (local: on a copy swapped in whole) "
                        "(default: sync changes only)")
    _common(p)

    p = sub.add_parser("train", help="train (--arch) or fine-tune (--model) a CLIP model on a captions file")
    p.add_argument("--csv", required=True, help="captions file with image_path,caption columns")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help=f"fine-tune this model ({', '.join(trainable_families())} families)")
    which.add_argument("--arch", help="train a small architecture from scratch (e.g. demo-small, or a JSON path)")
    p.add_argument("--checkpoint", help="local weights for --model")
    p.add_argument("--out", required=True, help="folder for epoch_NNN/, best/ and the training state")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training images")
    p.add_argument("--batch-size", type=int, default=128, help="image-caption pairs per step (the contrastive batch)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 5e-4 from scratch, 1e-5 fine-tuning)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of images held out for validation")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the order and new weights")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch saved in --out")
    _common(p)

    p = sub.add_parser("eval", help="Recall@K, mAP, NDCG@10 and ranks over captions, a query file or the demo benchmark")
    _features_arg(p)
    p.add_argument("--queries", help="query,image_path rows (several rows per query give its relevant set)")
    p.add_argument("--benchmark", choices=["demo", "demo-en", "relevance"],
                   help="run a held-out benchmark instead: demo (zh+en model, with/without expansion), demo-en "
                        "(English-only model, Chinese query sets by pipeline stage) or relevance (the relevance "
                        "cutoff on both, against a fixed cosine threshold)")
    p.add_argument("--compare-expansion", action="store_true", help="with and without expansion side by side")
    p.add_argument("--fuse", action="store_true",
                   help="also score reciprocal-rank fusion of image and caption rankings (expansion_fused)")
    p.add_argument("--no-expand", action="store_true", help="evaluate queries as typed")
    p.add_argument("--no-dict", action="store_true", help="no CC-CEDICT renderings (default: dictionary on)")
    _rules_arg(p, "expansion table")
    p.add_argument("--exact", action="store_true",
                   help="skip the index backend's own figures even when index.json names one (default: off)")
    p.add_argument("--per-query", metavar="FILE.csv",
                   help="write each query's first relevant rank and reciprocal rank with and without expansion, "
                        "and print the queries expansion helps and hurts most (default: off)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _common(p)

    p = sub.add_parser("models", help="the model names we support: languages, sizes, published Chinese figures")
    p.add_argument("--json", action="store_true", help="one JSON array on stdout (default: a table)")
    p.add_argument("--verbose", action="store_true", help="log details (and tracebacks) to stderr")

    p = sub.add_parser("log", help="review past searches: a filtered list, stats, an HTML report or a CSV table "
                                   "(exit 0; a damaged or newer-version line is skipped and named on stderr)")
    p.add_argument("what", nargs="?", choices=["stats"],
                   help="stats: searches per day, frequent queries, low top-1 scores, top-k changes (default: list)")
    p.add_argument("--log", default="outputs/search_log.jsonl",
                   help="search_log.jsonl or its folder (default: outputs/search_log.jsonl)")
    p.add_argument("--since", help="only searches on or after this date, YYYY-MM-DD[THH:MM] (default: all)")
    p.add_argument("--until", help="only searches on or before this date (a date includes its whole day) "
                                   "(default: all)")
    p.add_argument("--query", help="only queries containing this text (default: all)")
    p.add_argument("--model", help="only searches made with this model string (default: all)")
    p.add_argument("--mode", choices=["text", "image", "image+text"], help="only this search mode (default: all)")
    p.add_argument("--last", type=int, help="only the N most recent matching searches (default: all; --html: 100)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per record (stats: one object) (default: readable lines)")
    p.add_argument("--html", metavar="FILE",
                   help="write one self-contained HTML page, thumbnails embedded (default: no page)")
    p.add_argument("--csv", metavar="FILE", help="write the summary table as CSV (default: no table)")
    p.add_argument("--replay", action="store_true",
                   help="replay the listed searches and show each one's status (default: off)")
    p.add_argument("--features", help="with --replay: replay against this features folder (default: the logged one)")
    p.add_argument("--chunk-size", type=int, default=50_000, help="stats: records per pandas chunk (default: 50000)")
    _common(p)

    p = sub.add_parser("replay", help="re-run logged searches and report what changed and why "
                                      "(exit 0 all identical, 3 some differ or not replayable: a damaged or "
                                      "newer-version line of the log is not replayable, and named on stderr)")
    p.add_argument("--log", default="outputs/search_log.jsonl",
                   help="search_log.jsonl (or its folder) to replay (default: outputs/search_log.jsonl)")
    p.add_argument("--features", help="replay against this features folder instead of the logged one "
                                      "(default: the folder each record names)")
    p.add_argument("--json", action="store_true", help="one JSON object per record")
    _common(p)
    _watch_parser(sub)
    for choice in sub._choices_actions:   # each subcommand's own --help opens with its one-line description
        sub.choices[choice.dest].description = sub.choices[choice.dest].description or choice.help
    bilingual(parser)
    return parser


def cmd_extract(args: argparse.Namespace) -> int:
    from . import api
    from .collection.dataset import DEFAULT_MAX_PIXELS, PHOTO_EXTENSIONS

    result = api.extract_features(csv=args.csv, images=args.images, model=args.model, checkpoint=args.checkpoint,
                                  out=args.out, batch_size=args.batch_size, num_workers=args.num_workers,
                                  device=args.device, quiet=args.quiet,
                                  max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, rules=args.rules,
                                  update=args.update, exact_decode=args.exact_decode,
                                  skip_bad_rows=args.skip_bad_rows, engine=args.engine,
                                  ray_address=args.ray_address, workers=args.workers, shard_size=args.shard_size,
                                  follow_links=args.follow_links, ocr=args.ocr)
    counts = result.manifest.counts
    shards = (f"; shards: {result.shards['planned']}, {result.shards['resumed']} resumed from an earlier run"
              if result.shards and (result.shards["resumed"] or args.engine != "local" or args.shard_size) else "")
    print(f"已提取 / extracted: {counts['images']} images, {counts['captions']} captions, "
          f"{counts['skipped']} skipped -> {args.out} (encoded {result.encoded_images} images, "
          f"reused {result.reused_images}{shards})")
    if result.index is not None and result.index["rebuilt"]:
        print(f"索引已更新 / index updated: {result.index['backend']} over {result.index['config']['count']} vectors")
    elif result.index is not None:
        print(f"clipsou: 索引与新特征不符，检索将用精确扫描 / the {result.index['backend']} index no longer matches the "
              f"features and was built by an older version that did not record its options; searches use the exact "
              f"scan until you rebuild it: clipsou index --backend {result.index['backend']} --features {args.out}",
              file=sys.stderr)
    if result.ocr is not None:
        _print_ocr_summary(result)
    for entry in result.skipped:
        where = f" (line {entry['row']})" if entry.get("row") else ""   # folder mode has no CSV line
        print(f"  skipped / 跳过: {entry['path']}{where}: {entry['reason']}", file=sys.stderr)
    source = result.manifest.source
    for bad in source.get("bad_rows", []):
        print(f"  bad row skipped / 跳过坏行: {source['csv']} line {bad['line']}: {bad['reason']}", file=sys.stderr)
    ignored = source.get("ignored_types", {})
    if ignored:
        kinds = ", ".join(f"{suffix} {n}" for suffix, n in ignored.items())
        print(f"  未读取的文件类型 / files of other types not read: {sum(ignored.values())} ({kinds}); "
              f"convert the photos among them to JPEG or PNG (we read {', '.join(sorted(PHOTO_EXTENSIONS))})",
              file=sys.stderr)
    if source.get("excluded"):
        shown = ", ".join(source["excluded"][:5]) + (" …" if len(source["excluded"]) > 5 else "")
        print(f"  未索引本工具的输出 / left out this tool's own outputs: {len(source['excluded'])} ({shown})",
              file=sys.stderr)
    if source.get("outside_links"):
        shown = ", ".join(source["outside_links"][:3]) + (" …" if len(source["outside_links"]) > 3 else "")
        print(f"  未跟随指向文件夹外的链接 / symbolic links leading outside the folder not followed: "
              f"{len(source['outside_links'])} ({shown}); --follow-links includes them", file=sys.stderr)
    if source.get("raw_beside_jpeg"):
        shown = ", ".join(source["raw_beside_jpeg"][:3]) + (" …" if len(source["raw_beside_jpeg"]) > 3 else "")
        print(f"  RAW 与同名 JPEG 只索引 JPEG / RAW files beside a JPEG of the same name, indexed once as the JPEG: "
              f"{len(source['raw_beside_jpeg'])} ({shown})", file=sys.stderr)
    duplicates = source.get("duplicate_rows", {})
    if duplicates.get("count"):
        lines = ", ".join(map(str, duplicates["lines"][:10])) + (" …" if duplicates["count"] > 10 else "")
        print(f"  重复的行已忽略 / duplicate rows ignored: {duplicates['count']} (lines {lines})", file=sys.stderr)
    return EXIT_OK


def _print_ocr_summary(result) -> None:
    text = result.ocr
    print(f"文字识别 / OCR: {text.with_text} of {len(text.images)} images have text (read {result.ocr_read}, "
          f"reused {len(text.images) - result.ocr_read}, failed {len(text.failed)})")
    for entry in text.failed:
        print(f"  OCR failed / 文字识别失败: {entry['path']}: {entry['reason']} (picture features kept)", file=sys.stderr)


def _print_ocr_of(hit) -> None:
    """Under a hit: what matched it and the line (features with OCR text only)."""
    if hit.matched_by:
        line = f"  text / 文字: {hit.ocr_line}" if hit.ocr_line else ""
        print(f"{'':>14}matched by / 匹配: {hit.matched_by}{line}")
    elif hit.ocr_text:
        print(f"{'':>14}text / 图中文字: {hit.ocr_text}")


def _print_result(result, as_json: bool, backend: str = "exact", show_all: bool = False) -> None:
    if as_json:
        print(json.dumps(dict(result.to_json(), backend=backend), ensure_ascii=False), flush=True)
        return
    if result.image:
        print(f"图片 / image: {result.image}" + ("  -> captions / 图搜文" if result.to == "text" else ""))
    if result.mode != "image":
        print(f"查询 / query: {result.query}")
    if result.expansions:
        print("扩展 / expansions:")
        for line in result.expansion_lines():
            print("  " + line)
    from .relevance import shown

    hits, notes = shown(result.results, result.relevance, show_all)
    if hits and result.to == "text":
        print(f"{'rank':>4}  {'score':>6}  {'band':<9}  caption / 描述  (image / 图片)")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:6.4f}  {_band_text(hit):<9}  {hit.caption}  ({hit.image_path})")
            _print_ocr_of(hit)
    elif hits:
        print(f"{'rank':>4}  {'score':>6}  {'band':<9}  image / 图片  caption / 描述")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:6.4f}  {_band_text(hit):<9}  {hit.image_path}  {hit.caption}")
            _print_ocr_of(hit)
    for note in notes:
        print(note)
    if result.excluded:     # a copy of the query in the collection answers "is it in my library already?"
        print(f"已排除（与查询图片是同一文件）/ excluded, the query's own file: {', '.join(result.excluded)}")
    print(f"检索方式 / searched by: {'精确扫描 / exact scan' if backend == 'exact' else backend + ' index / 索引'}")
    print(flush=True)


def _band_text(hit) -> str:
    from .relevance import BANDS

    return f"{BANDS[hit.band]}/{hit.band}" if hit.band else ""


def _stdin_lines(prompt: str):
    """Non-empty lines from stdin until EOF or ``exit``; the prompt only when a person is typing."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print(prompt, end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            return
        if not line.strip():
            print("clipsou: 查询为空，已跳过 / empty query skipped", file=sys.stderr)
            continue
        yield line.rstrip("\n")


def cmd_search(args: argparse.Namespace) -> int:
    from . import api

    if args.query_text is not None:
        if args.query is not None:
            raise InputError(f"查询只能给一次 / give the query once: {args.query_text!r} or --query {args.query!r}, "
                            f"not both")
        args.query = args.query_text
    batch = bool(args.queries or args.image_dir)
    single = not batch and (args.query is not None or args.image is not None)
    items = api.batch_queries(args.queries, args.image_dir) if batch else None
    if args.grid:   # before any search runs or is logged
        from .grid import find_cjk_font
        find_cjk_font()
    searcher = api.open_searcher(args.features, model=args.model, checkpoint=args.checkpoint,
                                 rules=None if args.no_expand else args.rules, device=args.device,
                                 exact=args.exact, dictionary=not args.no_dict)
    where = api.where_filter(searcher, args.where_path, args.where_caption)
    if args.to == "text" or args.fuse:
        searcher.store.caption_features()
    if single:
        items = [(args.query, args.image)]
    elif batch:
        pass
    elif args.to == "text":  # image to text, one image path per line
        items = ((None, path.strip()) for path in _stdin_lines("图片路径 / image path (exit 退出)> "))
    else:
        items = ((q, None) for q in _stdin_lines("查询 / query (exit 退出)> "))
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    status, done = EXIT_OK, 0
    try:
        for outcome in api.search_many(searcher, items, k=args.top_k, expand=not args.no_expand,
                                       log_dir=args.log_dir, to=args.to, text_weight=args.text_weight,
                                       fuse=args.fuse, where=where,
                                       ocr="only" if args.ocr_only else "off" if args.no_ocr else "fuse"):
            if outcome.error is not None:
                if single:
                    raise outcome.error
                print(f"clipsou: {outcome.error}", file=sys.stderr)
                if batch:   # the bad input keeps its place in the JSON Lines, with its reason
                    print(json.dumps({"query": outcome.query, "image": outcome.image, "error": str(outcome.error)},
                                     ensure_ascii=False), file=out, flush=True)
                status = EXIT_PARTIAL if batch else EXIT_USAGE
                continue
            done += 1
            result = outcome.result
            if result.notice:
                print(f"clipsou: {result.notice}", file=sys.stderr)
            if batch:
                print(json.dumps(result.to_json(), ensure_ascii=False), file=out, flush=True)
            else:
                _print_result(result, args.json, searcher.index.name, show_all=args.all)
            if args.grid:
                from .grid import render_grid
                target = args.grid if not batch else _numbered(args.grid, outcome.n)
                render_grid(target, result.query, result.results, query_image=outcome.image)
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_USAGE if batch and status and not done else status


def _numbered(path: str, n: int) -> str:
    from pathlib import Path
    p = Path(path)
    return str(p.with_name(f"{p.stem}_{n:03d}{p.suffix or '.png'}"))


def cmd_classify(args: argparse.Namespace) -> int:
    from . import api

    labels = api.parse_labels(args.labels)
    encoder = api.classifier_encoder(args.model, args.checkpoint, args.features, args.device)
    items = api.classify(args.images, labels, encoder, rules=None if args.no_expand else args.rules)
    for item in items:
        if "error" in item:
            print(f"clipsou: {item['error']}", file=sys.stderr)
        if args.json:
            print(json.dumps(item, ensure_ascii=False))
        elif "error" not in item:
            ranked = sorted(item["probabilities"].items(), key=lambda kv: -kv[1])
            print(f"{item['image']}: " + "  ".join(f"{label} {p:.3f}" for label, p in ranked))
    failed = sum("error" in item for item in items)
    return EXIT_OK if not failed else EXIT_PARTIAL if failed < len(items) else EXIT_USAGE


def cmd_dedup(args: argparse.Namespace) -> int:
    from . import api

    groups = api.dedup(args.features, threshold=args.threshold)
    if args.json:
        print(json.dumps({"threshold": args.threshold, "groups": groups}, ensure_ascii=False))
        return EXIT_OK
    if not groups:
        print(f"没有近似重复 / no near-duplicates at threshold {args.threshold}")
    for n, group in enumerate(groups, start=1):
        print(f"group {n} ({len(group)} images):")
        for item in group:
            print(f"  {item['similarity']:.4f}  {item['path']}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from . import api
    from .logs import searchlog

    outcomes = api.replay_log(args.log, features=args.features, device=args.device)
    for o in outcomes:
        if args.json:
            print(json.dumps(o.to_json(), ensure_ascii=False))
            continue
        state = {searchlog.IDENTICAL: "identical / 一致", searchlog.DIFFERENT: "different / 不同",
                 searchlog.NOT_REPLAYABLE: "not replayable / 无法重放"}[o.status]
        why = f"  (cause / 原因: {', '.join(o.causes)})" if o.causes else ""
        what = f"[{o.record.get('time')}] {o.record.get('query')}" if o.record else f"line {o.line}"
        print(f"{what}: {state}{why}")
        for line in o.changes + ([o.reason] if o.reason else []):
            print(f"    {line}")
    same = sum(o.identical for o in outcomes)
    if not args.json:
        skipped = sum(o.status == searchlog.NOT_REPLAYABLE for o in outcomes)
        print(f"{same}/{len(outcomes)} identical / 一致, {len(outcomes) - same - skipped} different / 不同, "
              f"{skipped} not replayable / 无法重放")
    return EXIT_OK if same == len(outcomes) else EXIT_DIFFERENT


def cmd_log(args: argparse.Namespace) -> int:
    from .logs import review as logreview, searchlog

    if args.what == "stats":
        if args.chunk_size < 1:
            raise UserError(f"--chunk-size 至少为 1 / --chunk-size must be at least 1, got {args.chunk_size}")
        report = logreview.stats(args.log, chunksize=args.chunk_size, quiet=args.quiet or args.json)
        print(json.dumps(report, ensure_ascii=False) if args.json else logreview.format_stats(report))
        return EXIT_OK
    if args.last is not None and args.last < 1:
        raise UserError(f"--last 至少为 1 / --last must be at least 1, got {args.last}")
    last = args.last or (100 if args.html else None)
    records = logreview.select(searchlog.read_records(args.log), since=args.since, until=args.until,
                               query=args.query, model=args.model, mode=args.mode, last=last)
    outcomes = None
    if args.replay:
        from . import api

        outcomes = dict(enumerate(api.replay_records(records, args.log, features=args.features, device=args.device)))
    if args.html:
        logreview.write_html(records, args.html, outcomes)
        print(f"已写入 / wrote {args.html} ({len(records)} searches)", file=sys.stderr)
    if args.csv:
        logreview.write_csv(records, args.csv, outcomes)
        print(f"已写入 / wrote {args.csv} ({len(records)} searches)", file=sys.stderr)
    if args.html or args.csv:
        return EXIT_OK
    for n, record in enumerate(records):
        outcome = (outcomes or {}).get(n)
        if args.json:
            print(json.dumps({**record, "replay": outcome.to_json()} if outcome else record, ensure_ascii=False))
        else:
            line = logreview.format_line(logreview.summary(record))
            print(line + (f"  [{logreview.status_text(outcome)}]" if outcome else ""))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    result = train(args.csv, args.out, model=args.model, arch=args.arch, checkpoint=args.checkpoint,
                   epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                   seed=args.seed, resume=args.resume, quiet=args.quiet)
    print(f"best validation Recall@1 {result.best_recall:.3f} -> {result.best} "
          f"(use: --model open_clip:{args.arch or 'finetuned'} --checkpoint {result.best})")
    return EXIT_OK


METRICS = ("recall@1", "recall@5", "recall@10", "map", "ndcg@10", "mean_rank", "median_rank")


def _metric_table(title: str, columns: dict[str, dict]) -> None:
    print(title)
    print(f"  {'metric':<12}" + "".join(f"{name:>18}" for name in columns))
    for metric in METRICS:
        if all(metric in m for m in columns.values()):
            print(f"  {metric:<12}" + "".join(f"{m[metric]:>18.4f}" for m in columns.values()))


def _relevance_benchmark(args: argparse.Namespace) -> int:
    import tempfile

    from .demo import relevance_benchmark as bench

    with tempfile.TemporaryDirectory(prefix="clip_retrieval_bench_") as work:
        report = bench.relevance_benchmark(work, rules=args.rules, device=args.device, quiet=args.quiet)
    print(json.dumps(report, ensure_ascii=False) if args.json else bench.format_report(report))
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from . import api

    rules = None if args.no_expand else args.rules
    if args.benchmark and args.per_query:
        raise UserError("--per-query 不能与 --benchmark 同用 / --per-query works on --features (its captions or --queries), "
                        "not with --benchmark")
    if args.benchmark == "relevance":
        return _relevance_benchmark(args)
    if args.benchmark:
        from .demo import benchmark

        with tempfile.TemporaryDirectory(prefix="clip_retrieval_bench_") as work:
            if args.benchmark == "demo-en":
                report = benchmark.language_benchmark(work, rules=args.rules, device=args.device, quiet=args.quiet)
            else:
                report = benchmark.demo_benchmark(work, rules=args.rules, device=args.device, quiet=args.quiet,
                                                  fuse=args.fuse)
        report = {name: {mode: {k: m[k] for k in ("recall@1", "recall@5", "recall@10", "map", "ndcg@10")}
                         for mode, m in modes.items()} for name, modes in report.items()}
        if args.json:
            print(json.dumps(report, ensure_ascii=False))
        else:
            for name, modes in report.items():
                _metric_table(f"{args.benchmark} benchmark / 基准: {name}", modes)
        return EXIT_OK
    report = api.evaluate(args.features, queries=args.queries, rules=rules,
                          compare_expansion=args.compare_expansion, device=args.device, fuse=args.fuse,
                          dictionary=not args.no_dict, exact=args.exact,
                          per_query=bool(args.per_query))
    if args.per_query:
        from .evaluate import write_per_query

        write_per_query(report["per_query"], args.per_query)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return EXIT_OK
    print(f"model {report['model']}: {report['queries']} queries, {report['images']} images")
    t2i = report["text_to_image"]
    _metric_table("text -> image / 文搜图", t2i if args.compare_expansion or args.fuse else {"value": t2i})
    if "image_to_text" in report:
        _metric_table("image -> text / 图搜文", {"value": report["image_to_text"]})
    if "index" in report:
        served = report["index"]
        print(f"text -> image as served by {served['backend']} / 索引后端: " + "  ".join(
            f"{k} {v:.4f}" for k, v in served.items() if k != "backend"))
    if args.per_query:
        _per_query_table(report["per_query"], args.per_query)
    return EXIT_OK


def _per_query_table(rows: list[dict], path: str) -> None:
    """The queries expansion helps and hurts most, after the summary (all rows are in the CSV)."""
    from .evaluate import helps_and_hurts

    def rank(value) -> str:
        return "-" if value is None else str(value)

    helped, hurt = helps_and_hurts(rows)
    print(f"per query / 逐条查询: {len(rows)} rows -> {path}")
    for title, group in (("expansion helps most / 扩展帮助最大", helped), ("expansion hurts most / 扩展损害最大", hurt)):
        print(f"{title}:")
        if not group:
            print("  (none / 无)")
        for r in group:
            print(f"  {_pad(r['query'], 24)}  rank {rank(r['rank_no_expansion']):>4} -> {rank(r['rank_expansion']):<4}"
                  f"  RR {r['rr_no_expansion']:.3f} -> {r['rr_expansion']:.3f} ({r['rr_change']:+.3f})")


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    import unicodedata
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def _size(row: dict) -> str:
    if row["download_bytes"]:
        return f"{row['download_bytes'] / 1e6:.1f} MB"
    if row["estimated_download_mb"]:
        return f"~{row['estimated_download_mb']:.0f} MB est."
    return "unknown"


def cmd_models(args: argparse.Namespace) -> int:
    from .models.catalog import SOURCES, catalogue, families_help

    rows = catalogue()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return EXIT_OK
    notes = {text: f"[{n}]" for n, text in enumerate(SOURCES.values(), start=1)}
    header = ["名称 / name", "语言 / reads", "维度 / dim", "参数 / params", "下载 / download",
              "中文文搜图 R@1 / zh text-to-image R@1"]
    table = [header]
    for row in rows:
        figures = " ".join(f"{f['benchmark']} {f['r@1']:.1f}{notes[f['source']]}" for f in row["zh_text_to_image_r@1"])
        params = f"{row['params_millions']:.0f}M{notes[row['params_source']]}" if row["params_millions"] else "unknown"
        table.append([row["name"] + (" (默认 / default)" if row["default"] else ""), ",".join(row["languages"]),
                      str(row["embed_dim"]), params, _size(row), figures or "未见公开 / none published"])
    widths = [max(_width(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(_pad(cell, w) for cell, w in zip(line, widths)).rstrip())
    print("\n来源 / sources (est. = 4 bytes per parameter, float32; a float16 file is half):")
    for text, mark in notes.items():
        print(f"  {mark} {text}")
    print("\n系列 / families:\n" + families_help())
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    from . import api

    if args.backend == "faiss":
        meta = api.build_index(args.features, "faiss", quiet=args.quiet, kind=args.kind, fp16=args.fp16)
        print(f"索引 / index: faiss {meta['kind']}{' fp16' if meta['fp16'] else ''} over {meta['count']} vectors in "
              f"{meta['build_seconds']:.1f} s, {meta['size_bytes'] / 1e6:.1f} MB on disk -> {args.features}")
    elif args.backend == "qdrant":
        meta = api.build_index(args.features, "qdrant", quiet=args.quiet, path=args.qdrant_path, url=args.qdrant_url,
                               collection=args.collection, shards=args.shards, replicas=args.replicas,
                               hnsw_m=args.hnsw_m, hnsw_ef_construct=args.hnsw_ef_construct, hnsw_ef=args.hnsw_ef,
                               recreate=args.recreate)
        from pathlib import Path

        where = meta["url"] or Path(args.features) / meta["path"]
        print(f"索引 / index: qdrant collection {meta['collection']} at {where}: "
              f"{meta['count']} points, {meta['written']} written, {meta['deleted']} deleted -> {args.features}")
    else:
        meta = api.build_index(args.features, args.backend, quiet=args.quiet)
        print(f"索引 / index: {args.backend} over {meta['count']} vectors -> {args.features}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    require("gradio")
    from .web import serve

    serve(args.features, args.host, args.port, args.rules, args.device, dictionary=not args.no_dict, watch=args.watch)
    return EXIT_OK


COMMANDS = {"serve": cmd_serve, "classify": cmd_classify, "dedup": cmd_dedup, "index": cmd_index, "extract": cmd_extract, "search": cmd_search, "train": cmd_train, "eval": cmd_eval,
            "replay": cmd_replay, "models": cmd_models, "log": cmd_log}


# --- clipsou watch (issue 26) ---------------------------------------------------------------------

def _watch_parser(sub) -> None:
    p = sub.add_parser("watch", help="让特征（和索引）随图片文件夹自动更新 / keep a features folder (and its index) "
                                     "current while photos are added, changed, moved or deleted")
    p.add_argument("--images", required=True,
                   help="要监视的图片文件夹（含子文件夹） / the photo folder to follow, subfolders included")
    p.add_argument("--out", default="outputs", help="特征文件夹 / features folder kept current (default: outputs)")
    p.add_argument("--model", help="model string (default: the model that built --out, else the default model)")
    p.add_argument("--checkpoint", help="local weights file or folder")
    p.add_argument("--batch-size", type=int, default=32, help="每批图片数 / images per model call (default: 32)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="解码线程数 / image decoding workers (default: cores-1, 1 to 4)")
    p.add_argument("--rescan", type=float, default=30.0, metavar="SECONDS",
                   help="兜底的定期重新扫描间隔 / rescan the folder this often, besides filesystem events (default: 30)")
    p.add_argument("--follow-links", action="store_true",
                   help="也跟随指向文件夹外的符号链接 / also follow symbolic links leading outside --images "
                        "(default: only links that stay inside)")
    _rules_arg(p, "expansion table")
    _common(p)


def cmd_watch(args: argparse.Namespace) -> int:
    """Update now, then after each batch of changes, until Ctrl-C; Ctrl-C lets the batch in progress finish."""
    import time

    from . import api

    def report(status) -> None:
        print(f"已更新 / updated {time.strftime('%H:%M:%S', time.localtime(status.updated_at))}: "
              f"{status.images} photos -> {args.out}", flush=True)

    watcher = api.watcher(args.images, args.out, model=args.model, checkpoint=args.checkpoint, device=args.device,
                          batch_size=args.batch_size, num_workers=args.num_workers, rules=args.rules,
                          follow_links=args.follow_links, quiet=args.quiet, rescan_s=args.rescan, on_update=report)
    print(f"监视中 / watching {args.images} -> {args.out} (Ctrl-C 停止 / to stop)", file=sys.stderr, flush=True)
    watcher.start()
    try:
        while watcher.running():
            time.sleep(0.5)   # not Thread.join: Ctrl-C inside a join can leave the thread marked as ended
    except KeyboardInterrupt:
        print("clipsou: 正在完成当前批次 / finishing the batch in progress, then stopping", file=sys.stderr, flush=True)
        watcher.stop()
    if watcher.status.updates == 0 and watcher.status.last_error:
        raise UserError(watcher.status.last_error)
    return EXIT_OK


COMMANDS["watch"] = cmd_watch


class _StderrHandler(logging.StreamHandler):
    """Logs to the ``sys.stderr`` of the moment, so a redirected or captured stderr gets them too.

    Without --verbose a warning is only its message (the user reads it, not the logger's name);
    with --verbose every record names its level and logger.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:   # `clipsou` alone: the usage and the list of subcommands, not a one-line error
        print(parser.format_help(), file=sys.stderr, end="")
        return EXIT_USAGE
    args = parser.parse_args(argv)
    root, handler = logging.getLogger(), _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s"))
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"clipsou: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("clipsou: interrupted / 已中断", file=sys.stderr)
        if args.command == "extract":   # every engine keeps the shards it finished
            print(f"clipsou: 已编码的部分保留在 {args.out} 中，重新运行同一命令即可继续 / what was encoded is kept in "
                  f"{args.out}: run the same command again to go on from there", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # the last line of defence: one line, the traceback only when asked
        known = missing_extra(exc) or torch_mismatch(exc)
        if known is not None:   # an optional library absent deep down, or a broken torch install: the fix
            print(f"clipsou: {known}", file=sys.stderr)
            return EXIT_USAGE
        if args.verbose:
            raise
        print(f"clipsou: unexpected error / 意外错误: {type(exc).__name__}: {exc} "
              f"(run with --verbose for details)", file=sys.stderr)
        return EXIT_ERROR
    finally:   # in-process callers (tests, scripts) get their logging back as it was
        root.removeHandler(handler)
        root.setLevel(saved_level)


def run_subcommand(command: str, argv: Sequence[str] | None = None) -> int:
    """Entry for the ``scripts`` wrappers: ``python -m scripts.X`` is ``clipsou command``."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
