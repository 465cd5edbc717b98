"""The Python API the CLI and the web page wrap: extract, open a searcher, search (and
log), batch search, replay, evaluate, index, classify, dedup, and the watcher that keeps features current.

Library first, CLI second: every subcommand is a thin layer over these functions, which
tests call directly. This module wires the owners together (choosing the model for a
features folder, building the expansion cache beside it) and owns the policies every
front end shares: each search is logged (``search``), and in a batch one bad query is
reported in its outcome while the rest still run (``search_many``). The work itself
belongs to the modules it calls.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from . import evaluate as ev
from . import index as backends
from .logs import searchlog
from .features import store
from .collection.dataset import DEFAULT_MAX_PIXELS, read_captions, read_query_lines, scan_images
from .dedup import near_duplicate_groups
from .query.dictionary import load_dictionary, words_file
from .models import DEFAULT_MODEL
from .engines import make_engine
from .core.errors import InputError, UserError
from .query.expansion import DEFAULT_RULES, RuleTable, find_rules, load_rules
from .extract import ExtractResult, extract
from .index.base import Where, check_matches, rows_of
from .search import Searcher, SearchResult, build_expansion_cache  # noqa: F401  (Searcher is API)
from .models import OnDemand, open_encoder
from .models.onnx import weights_fingerprint
from .zeroshot import classify_images, parse_labels
from .watch import RESCAN_S, SETTLE_S, Watcher

if TYPE_CHECKING:
    from .models import Encoder

log = logging.getLogger(__name__)


def extract_features(csv: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                     model: str | None = None, checkpoint: str | None = None, out: str | os.PathLike = "outputs",
                     batch_size: int = 32, num_workers: int | None = None, device: str = "auto",
                     quiet: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                     encoder: Encoder | None = None,
                     rules: str | os.PathLike | None = DEFAULT_RULES, update: bool = False,
                     exact_decode: bool = False, skip_bad_rows: bool = False, engine: str = "local",
                     ray_address: str | None = None, workers: int | None = None,
                     shard_size: int | None = None, follow_links: bool = False,
                     ocr: bool = False) -> ExtractResult:
    """Validate the collection first (cheap), then load the model and encode it.

    When the rules file exists, the expansion cache is built too, so first searches are fast.
    ``update`` re-encodes only what changed since the features already in ``out``.
    ``exact_decode`` turns JPEG draft decoding off (pixels as a plain PIL decode gives them).
    ``skip_bad_rows`` leaves malformed CSV rows out (listed in the manifest's source) instead of refusing the file.
    ``model=None``: with ``update``, the model (and local weights) that built the features in ``out``, else the
    default model.
    ``engine="ray"`` encodes the images in shards of ``shard_size`` as Ray tasks (``workers`` at a time) on the
    cluster at ``ray_address`` (or ``RAY_ADDRESS``), else on a local Ray; the features saved are those the local
    engine saves. Every engine works in shards (the local one in small ones, ``engines.local_shard_size``), so a
    rerun after an interruption or a crash encodes only the shards not finished.
    ``follow_links`` follows symbolic links in ``images`` that lead outside it (``scan_images`` has the policy).
    ``ocr`` also reads the text in the images (``models.ocr``, the ``ocr`` extra) into ``ocr_text.json``;
    an ``update`` of features that have OCR text keeps reading it (``ocr_wanted``).
    """
    if csv is not None and images is not None:
        raise InputError("--csv 和 --images 只能选一个 / give either --csv or --images, not both")
    if model is None:
        model, checkpoint = _model_of(out, checkpoint) if update else (DEFAULT_MODEL, checkpoint)
    sharded = make_engine(engine, out, model, checkpoint, device, shard_size, ray_address, workers,
                          encoder_given=encoder is not None)
    if images is not None:
        coll = scan_images(images, follow_links=follow_links, exclude=(out,))
    else:
        coll = read_captions(csv or "data/captions.csv", skip_bad_rows=skip_bad_rows)
    previous = None
    if update and (Path(out) / store.MANIFEST_FILE).is_file():
        previous = store.load(out, with_text=False)
        previous.check_model(encoder.name if encoder else model, checkpoint=checkpoint)
        if encoder is None and checkpoint:   # other local weights are refused before anything is reused
            previous.check_model(model, weights_fingerprint(model, checkpoint), checkpoint)
    accept = (lambda e: previous.check_model(e.name, e.fingerprint, checkpoint)) if previous is not None else None
    model_slot = OnDemand(encoder or (lambda: open_encoder(model, checkpoint, device)), accept)
    ocr_engine = ocr_wanted(ocr, out if previous is not None else None)
    # an --update with nothing new loads no model; a first extraction opens it at once
    result = extract(model_slot if previous is not None else model_slot.get(), coll, out, batch_size=batch_size,
                     num_workers=num_workers, quiet=quiet, max_pixels=max_pixels, checkpoint=checkpoint,
                     previous=previous, exact_decode=exact_decode, encode=sharded.encode,
                     ocr=ocr_engine, read_text=sharded.read_text if ocr_engine and engine == "ray" else None)
    sharded.finish()
    result.shards = sharded.summary()
    if previous is not None:   # the index built over the old features would stop serving searches
        result.index = backends.refresh(store.load(out, with_text=False), quiet=quiet)
    if previous is None:   # counted among the images read: a skipped file is reported as skipped, not as a photo
        _warn_demo_model_on_photos(model_slot.get(), [image["path"] for image in result.manifest.images])
    if rules is not None and find_rules(rules) is not None:
        table = load_rules(rules)
        fingerprint = result.manifest.model.fingerprint
        cache = store.load_expansion_cache(out, fingerprint, table.sha256)   # this folder's, else the shared one
        if cache is None:
            cache = build_expansion_cache(model_slot.get(), table)
            _prepare_word_file()
            _keep_expansion_cache(out, cache, fingerprint, table.sha256)
        elif not (Path(out) / store.EXPANSION_CACHE_FILE).is_file():
            _keep_expansion_cache(out, cache, fingerprint, table.sha256)
    return result


def ocr_wanted(ocr: bool, previous: str | os.PathLike | None):
    """The OCR engine's opener when text is to be read (asked for, or the features being updated have
    some), else None; a missing ``ocr`` extra is refused now, before any image is read."""
    from .features.ocrtext import OCR_FILE
    from .models.ocr import engine_identity, open_ocr

    if not ocr and not (previous is not None and (Path(previous) / OCR_FILE).is_file()):
        return None
    if not ocr:
        log.info("these features have OCR text: --update reads the text of new images too")
    engine_identity()
    return open_ocr


def _model_of(out: str | os.PathLike, checkpoint: str | None) -> tuple[str, str | None]:
    """The model (and, unless other weights are given, the local weights) that built the features in ``out``;
    the default model when there are none yet."""
    if not (Path(out) / store.MANIFEST_FILE).is_file():
        return DEFAULT_MODEL, checkpoint
    saved = store.read_manifest(out).model
    if checkpoint is None and saved.checkpoint and Path(saved.checkpoint).exists():
        checkpoint = saved.checkpoint
    return saved.name, checkpoint


def _prepare_word_file() -> None:
    """A first use: the word data a query outside the table reads is made now, not at that query.

    Only a preparation: the features are saved already, so a failure here is a warning.
    """
    try:
        words_file(temporary=False)
    except (OSError, UserError, ValueError) as exc:
        log.warning("could not prepare the word file now (%s); the first query that needs it will try again", exc)


def _keep_expansion_cache(folder: str | os.PathLike, cache: tuple[list[str], np.ndarray], model_fingerprint: str,
                          rules_sha256: str) -> bool:
    """Save the expansion cache beside the features; when it cannot be written (a full disk, a read-only
    folder) searches still work, only slower, so this warns instead of failing the command."""
    try:
        store.save_expansion_cache(folder, *cache, model_fingerprint, rules_sha256)
    except OSError as exc:
        log.warning("扩展缓存未写入，检索照常但较慢 / expansion cache not written, searches still work "
                    "(the model encodes the phrasings each time): %s", exc)
        return False
    return True


def _warn_demo_model_on_photos(encoder: Encoder, images: list[str]) -> None:
    """Once per run: the bundled demo models were trained on generated drawings only."""
    from .collection.generated import is_demo_drawing
    from .models.catalog import BUNDLED

    if encoder.name not in BUNDLED:
        return
    others = sum(not is_demo_drawing(p) for p in images)
    if others:
        log.warning("演示模型只认识内置的示意图（8 种主体 × 4 种场景），%d/%d 张图片不是，结果没有意义 / the demo model only "
                    "knows the bundled drawings (8 subjects in 4 scenes); %d of %d images are not among them, so their "
                    "results mean nothing: use a real model, e.g. --model open_clip:ViT-B-32/openai or cn_clip:ViT-B-16",
                    others, len(images), others, len(images))


def encoder_for(manifest: store.Manifest, checkpoint: str | None = None, device: str = "auto") -> Encoder:
    """The encoder that made a features folder (its checkpoint too, unless another is given).

    On a CPU it is the exported ONNX model when there is one for the recorded weights.
    """
    name = manifest.model.name
    saved = manifest.model.checkpoint
    if checkpoint is None and saved and Path(saved).exists():
        checkpoint = saved
    return open_encoder(name, checkpoint, device, manifest.model.fingerprint if checkpoint == saved else None)


def open_searcher(features: str | os.PathLike = "outputs", model: str | None = None,
                  checkpoint: str | None = None, rules: str | os.PathLike | None = DEFAULT_RULES,
                  device: str = "auto", encoder: Encoder | None = None, exact: bool = False,
                  dictionary: bool = True) -> Searcher:
    """Load features and the rules table (``rules=None``: no expansion); the model loads on first need.

    The index backend ``index.json`` names (FAISS, Qdrant) serves the searches unless ``exact`` is
    set. ``dictionary``: words no
    rule covers get CC-CEDICT renderings (read on the first such word).

    The expansion cache beside the features is used when it matches the model and rules,
    and rebuilt (which loads the model) when it does not. Local weights given as
    ``checkpoint`` are loaded and checked at once: other weights than the ones that built
    the features are refused (``ModelMismatchError``) before any search runs.
    """
    feats = store.load(features, with_text=False)
    feats.check_model(model, checkpoint=checkpoint)
    if encoder is None and checkpoint:   # other weights are refused before they are loaded (or exported)
        feats.check_model(model, weights_fingerprint(model or feats.manifest.model.name, checkpoint), checkpoint)
    table: RuleTable | None = load_rules(rules) if rules is not None else None
    searcher = Searcher(feats, encoder or (lambda: encoder_for(feats.manifest, checkpoint, device)), table,
                        index=backends.open_index(feats, exact=exact),
                        dictionary=load_dictionary() if dictionary else None, checkpoint=checkpoint)
    if checkpoint is not None:
        searcher.encoder  # load and check the weights the user named now, not at first need
    if table is not None:
        fingerprint = feats.model_fingerprint
        cache = store.load_expansion_cache(features, fingerprint, table.sha256)
        if cache is None:
            log.info("building the expansion cache for %s", table.path)
            cache = build_expansion_cache(searcher.encoder, table)
            _keep_expansion_cache(features, cache, fingerprint, table.sha256)
        searcher.use_cache(*cache)
    return searcher


def record_for(searcher: Searcher, result: SearchResult) -> dict:
    """The log record of one search made with ``searcher``."""
    rules = searcher.rules
    used = rules is not None and result.expand
    record = searchlog.make_record(
        result, searcher.store, model_fingerprint=searcher.model_fingerprint,
        rules_sha256=rules.sha256 if used else None, rules_path=rules.path if used else None,
        backend=searcher.index.name)
    record["dictionary"] = used and searcher.dictionary is not None
    if result.ocr is not None:   # features with OCR text: how it was used, what it was, what each hit matched
        record["ocr"] = result.ocr
        record["ocr_fingerprint"] = searcher.ocr_text.fingerprint
    for row, hit in zip(record["results"], result.results):
        row.update(hit.ocr_json())
    return record


def search(searcher: Searcher, query: str | None = None, k: int = 5, expand: bool = True,
           log_dir: str | os.PathLike | None = None, image: str | os.PathLike | None = None, to: str = "image",
           text_weight: float = 0.5, fuse: bool = False, where: Where | None = None,
           ocr: str = "fuse") -> tuple[SearchResult, dict]:
    """Run one search (text, image, or image plus text) and append its record to the log.

    The log goes to ``log_dir`` (the features folder by default). ``ocr``: how a text query uses the
    text read in the images (``Searcher.search_text``).
    """
    result = run_query(searcher, query=query, k=k, expand=expand, image=image, to=to, text_weight=text_weight,
                       fuse=fuse, where=where, ocr=ocr)
    record = record_for(searcher, result)
    searchlog.append(log_dir if log_dir is not None else searcher.store.folder, record)
    return result, record


@dataclass
class QueryOutcome:
    """One query of a batch: its result, or the user error that stopped it (the others still ran)."""

    n: int                                  # 1-based position in the batch
    query: str | None
    image: str | None
    result: SearchResult | None = None
    error: UserError | None = None


def batch_queries(queries: str | os.PathLike | None = None,
                  image_dir: str | os.PathLike | None = None) -> list[tuple[str | None, str | None]]:
    """(text, image) pairs for a batch: one text query per line of ``queries``, or every image in ``image_dir``."""
    if queries is not None and image_dir is not None:
        raise InputError("--queries 和 --image-dir 只能选一个 / give --queries or --image-dir, not both")
    if queries is None and image_dir is None:
        raise InputError("批量检索需要 --queries 或 --image-dir / a batch needs --queries FILE or --image-dir DIR")
    if queries is not None:
        return [(line, None) for line in read_query_lines(queries)]
    coll = scan_images(image_dir)
    return [(None, str(coll.resolve(p))) for p in coll.images]


def search_many(searcher: Searcher, items: Iterable[tuple[str | None, str | None]], k: int = 5, expand: bool = True,
                log_dir: str | os.PathLike | None = None, to: str = "image", text_weight: float = 0.5,
                fuse: bool = False, where: Where | None = None, ocr: str = "fuse") -> Iterator[QueryOutcome]:
    """Search (and log) each (text, image) pair in turn: the partial-result policy.

    A query a user got wrong (empty, an unreadable image) becomes that outcome's ``error``
    and the rest still run; anything else is a bug and stops the batch.
    """
    for n, (query, image) in enumerate(items, start=1):
        outcome = QueryOutcome(n, query, image)
        try:
            outcome.result, _ = search(searcher, query, k=k, expand=expand, log_dir=log_dir, image=image, to=to,
                                       text_weight=text_weight, fuse=fuse, where=where, ocr=ocr)
        except UserError as exc:
            outcome.error = exc
        yield outcome


def run_query(searcher: Searcher, query: str | None = None, k: int = 5, expand: bool = True,
              image: str | os.PathLike | None = None, to: str = "image", text_weight: float = 0.5,
              fuse: bool = False, where: Where | None = None, ocr: str = "fuse") -> SearchResult:
    """Dispatch to the search mode the arguments name (shared by the CLI, the page and replay)."""
    if image is not None:
        return searcher.search_image(image, k=k, to=to, text=query, text_weight=text_weight, expand=expand,
                                     where=where)
    if to != "image":
        raise InputError("--to text 需要 --image / --to text needs --image PATH (image-to-text search)")
    return searcher.search_text(query or "", k=k, expand=expand, fuse=fuse, where=where, ocr=ocr)


def where_filter(searcher: Searcher, path_prefix: str | None = None,
                 caption_contains: str | None = None) -> Where | None:
    """``--where-path`` and ``--where-caption`` as one filter every backend runs (None: no filter).

    A filter that no image passes is refused (``InputError`` naming it), never an empty answer.
    """
    where = Where.parse(path_prefix, caption_contains, searcher.store.root)
    if where is not None:
        check_matches(where, rows_of(searcher.store))
    return where


def replay_log(log_path: str | os.PathLike, features: str | os.PathLike | None = None,
               device: str = "auto") -> list[searchlog.ReplayOutcome]:
    """Re-run every logged query against current (or other) features and rules, without logging again.

    Records that cannot run are reported as not replayable and the others still run; so are
    the log's damaged lines and records of a newer version (each also named in a warning): a
    replay never calls what it did not run identical. A ``features`` folder the user names
    must exist (bad input, not a replay outcome).
    """
    if features is not None:
        store.read_manifest(features)
    lines = list(searchlog.warn_skipped(searchlog.read_lines(log_path)))
    return replay_records(lines, log_path, features=features, device=device)


def replay_records(records: list[dict] | list[searchlog.LogLine], log_path: str | os.PathLike,
                   features: str | os.PathLike | None = None, device: str = "auto") -> list[searchlog.ReplayOutcome]:
    """Replay the given records (of the log at ``log_path``); one searcher per features folder and rules file."""
    searchers: dict[tuple, Searcher] = {}
    holdings: dict[Path, set[Path]] = {}   # per collection root: its images' relative paths

    def searcher_for(record: dict) -> Searcher:
        folder = searchlog.features_folder(record, log_path, features)
        rules = searchlog.rules_file(record, log_path) if record.get("expand") else None
        dictionary = record.get("dictionary", True)
        key = (folder, rules, dictionary)
        if key not in searchers:
            encoder = next((s.encoder for s in searchers.values() if s.store.folder == Path(folder)), None)
            searchers[key] = open_searcher(folder, rules=rules, device=device, encoder=encoder, dictionary=dictionary)
        return searchers[key]

    def run(record: dict) -> dict:
        searcher = searcher_for(record)
        mode = record.get("mode", "text")
        result = run_query(searcher, query=None if mode == "image" else record.get("query"), k=record.get("k", 5),
                           expand=bool(record.get("expand")), image=record.get("image"), to=record.get("to", "image"),
                           text_weight=record.get("text_weight") or 0.5, fuse=record.get("fuse", False),
                           where=Where(**record["where"]) if record.get("where") else None,
                           ocr=record.get("ocr") or "fuse")
        return record_for(searcher, result)

    def holds(record: dict, path: str) -> bool:
        manifest = searcher_for(record).store.manifest
        if manifest.root not in holdings:   # once per collection
            holdings[manifest.root] = {Path(entry["path"]) for entry in manifest.images}
        return Path(path) in holdings[manifest.root]

    return searchlog.replay(records, run, holds)


def evaluate(features: str | os.PathLike = "outputs", queries: str | os.PathLike | None = None,
             rules: str | os.PathLike | None = DEFAULT_RULES, compare_expansion: bool = False,
             device: str = "auto", encoder: Encoder | None = None, fuse: bool = False, dictionary: bool = True,
             exact: bool = False, per_query: bool = False) -> dict:
    """Text-to-image and image-to-text metrics over a features folder (its captions or a query file).

    With ``compare_expansion`` the text-to-image metrics come twice: ``no_expansion`` and ``expansion``.
    Expansion is what search does (the dictionary too, unless ``dictionary`` is off).
    The metrics rank every image exactly; when ``index.json`` names another backend (and ``exact`` is
    not set), ``index`` adds recall@1/5/10 and NDCG@10 as that backend serves them, and how many of
    the exact top 10 it returns (``agreement@10``).
    ``per_query`` adds ``per_query`` rows: each query's first relevant rank and reciprocal rank
    without and with expansion.
    """
    feats = store.load(features)
    searcher = Searcher(feats, encoder or encoder_for(feats.manifest, device=device),
                        load_rules(rules) if rules is not None else None,
                        dictionary=load_dictionary() if dictionary else None)
    qs = ev.file_queries(queries, feats.manifest) if queries else ev.caption_queries(feats.manifest)
    modes = [False, True] if compare_expansion else [rules is not None]
    result: dict = {"model": feats.model, "queries": len(qs.queries), "images": feats.image_features.shape[0]}
    t2i = {("expansion" if m else "no_expansion"): ev.text_to_image(searcher.query_vectors(qs.queries, m),
                                                                       feats.image_features, qs.relevant)
           for m in modes}
    if fuse:
        vectors = searcher.query_vectors(qs.queries, rules is not None)
        fused = np.stack([searcher.fused_scores(v, feats.image_features.shape[0]) for v in vectors])
        t2i[("expansion" if rules is not None else "no_expansion") + "_fused"] = ev.retrieval_metrics(fused, qs.relevant)
    result["text_to_image"] = t2i if compare_expansion or fuse else next(iter(t2i.values()))
    index = backends.open_index(feats, exact=exact)
    if index.name != "exact":
        result["index"] = _served_metrics(index, searcher.query_vectors(qs.queries, modes[-1]),
                                          feats.image_matrix(), qs.relevant)
    if per_query:
        if rules is None:
            raise InputError("--per-query 不能与 --no-expand 同用 / --per-query compares each query with and without expansion; "
                             "drop --no-expand")
        plain, expanded = (searcher.query_vectors(qs.queries, m) @ feats.image_matrix().T for m in (False, True))
        result["per_query"] = ev.per_query(qs.queries, qs.relevant, plain, expanded)
    if feats.manifest.captions:
        texts = list(dict.fromkeys(c["text"] for c in feats.manifest.captions))
        result["image_to_text"] = ev.image_to_text(feats.manifest, feats.image_features,
                                                   searcher.encoder.encode_texts(texts), texts)
    return result


def _served_metrics(index: backends.VectorIndex, vectors: np.ndarray, matrix: np.ndarray,
                    relevant: list[set[int]], depth: int = 10) -> dict:
    """Top-``depth`` metrics of the rankings a backend serves, and its overlap with the exact top ``depth``."""
    from .index.exact import exact_topk

    queries = np.asarray(vectors, dtype=np.float32)
    rows, scores = index.search(queries, depth)
    served = np.full((len(queries), matrix.shape[0]), -np.inf, dtype=np.float32)
    overlap = []
    for q in range(len(queries)):
        keep = rows[q] >= 0
        served[q, rows[q][keep]] = scores[q][keep]
        truth = exact_topk(matrix, queries[q], depth)[0]
        overlap.append(len(set(rows[q][keep].tolist()) & set(truth.tolist())) / max(1, len(truth)))
    metrics = ev.retrieval_metrics(served, relevant)
    out = {"backend": index.name, **{k: metrics[k] for k in ("recall@1", "recall@5", "recall@10", "ndcg@10")}}
    out[f"agreement@{depth}"] = float(np.mean(overlap)) if overlap else 1.0
    return out


def build_index(features: str | os.PathLike = "outputs", backend: str = "faiss", quiet: bool = True,
                **options) -> dict:
    """Make an index backend serve a features folder (recorded in ``index.json`` beside them).

    ``options`` are the backend's: FAISS ``kind``, ``fp16``; Qdrant ``path`` or ``url``, ``collection``,
    ``shards``, ``replicas``, ``hnsw_m``, ``hnsw_ef_construct``, ``hnsw_ef``, ``recreate``.
    Returns the config written (for Qdrant with the points written and deleted).
    """
    feats = store.load(features, with_text=False)
    return backends.build(feats, backend, options, quiet=quiet)


def classifier_encoder(model: str | None = None, checkpoint: str | None = None,
                       features: str | os.PathLike | None = None, device: str = "auto") -> Encoder:
    """The model named, else the one that built ``features`` (when there are some), else the default."""
    if model:
        return open_encoder(model, checkpoint, device)
    if features is not None and (Path(features) / store.MANIFEST_FILE).is_file():
        return encoder_for(store.read_manifest(features), checkpoint, device)
    return open_encoder(DEFAULT_MODEL, checkpoint, device)


def classify(images: list[str | os.PathLike], labels: str | list[str], encoder: Encoder,
             rules: str | os.PathLike | None = DEFAULT_RULES) -> list[dict]:
    """Zero-shot classification (``zeroshot``): probabilities over the labels for each image file."""
    return classify_images(images, parse_labels(labels), encoder, load_rules(rules) if rules is not None else None)


def dedup(features: str | os.PathLike = "outputs", threshold: float = 0.95, block: int = 4096) -> list[list[dict]]:
    """Groups of near-duplicate images (``dedup``) with their paths, largest group first."""
    feats = store.load(features, with_text=False)
    groups = [[{"path": feats.image_path(i), "similarity": round(sim, 6)} for i, sim in group]
              for group in near_duplicate_groups(feats.image_features, threshold, block)]
    return sorted(groups, key=lambda g: (-len(g), g[0]["path"]))


def watcher(images: str | os.PathLike, out: str | os.PathLike = "outputs", model: str | None = None,
            checkpoint: str | None = None, device: str = "auto", encoder: Encoder | None = None,
            batch_size: int = 32, num_workers: int | None = None, rules: str | os.PathLike | None = DEFAULT_RULES,
            follow_links: bool = False, quiet: bool = True, rescan_s: float = RESCAN_S, settle_s: float = SETTLE_S,
            on_update=None) -> Watcher:
    """A ``Watcher`` keeping the features in ``out`` (and the index beside them) current with ``images``.

    Each batch of changes runs ``extract_features(images=..., update=True)``: only new and changed
    photos are encoded (a moved one under its new path), deleted ones leave the set,
    and the whole set is replaced at once. ``.start()`` runs it in a thread, ``.run()`` blocks,
    ``.stop()`` waits for the batch in progress. The model (``model=None``: the one that built
    ``out``, else the default) is opened once, at the first update, and kept.
    """
    if not Path(images).is_dir():
        raise InputError(f"找不到图片文件夹 / image folder not found: {images}; watch follows an existing folder")
    if model is None and encoder is None:
        model, checkpoint = _model_of(out, checkpoint)
    slot = OnDemand(encoder or (lambda: open_encoder(model, checkpoint, device)))

    def update() -> int:
        result = extract_features(images=images, out=out, model=model, checkpoint=checkpoint, encoder=slot.get(),
                                  batch_size=batch_size, num_workers=num_workers, device=device, quiet=quiet,
                                  rules=rules, update=True, follow_links=follow_links)
        log.info("updated %s: %d photos (%d encoded, %d reused)", out, len(result.manifest.images),
                 result.encoded_images, result.reused_images)
        return len(result.manifest.images)

    return Watcher(images, update, exclude=(out,), rescan_s=rescan_s, settle_s=settle_s, on_update=on_update)
