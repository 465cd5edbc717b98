"""The Python API the CLI wraps: extract, open a searcher, search (and log), replay.

Library first, CLI second: every subcommand is a thin layer over these functions, which
tests call directly. This module wires the owners together and owns nothing else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import ann, searchlog, store
from .dataset import DEFAULT_MAX_PIXELS, read_captions, scan_images
from .encoders import DEFAULT_MODEL, load_encoder
from .encoders.base import Encoder
from .errors import InputError
from .expansion import DEFAULT_RULES, RuleTable, load_rules
from .extract import ExtractResult, extract
from .search import Searcher, SearchResult, build_expansion_cache

log = logging.getLogger(__name__)


def extract_features(csv: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                     model: str = DEFAULT_MODEL, checkpoint: str | None = None, out: str | os.PathLike = "outputs",
                     batch_size: int = 32, num_workers: int | None = None, device: str = "auto",
                     quiet: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                     encoder: Encoder | None = None,
                     rules: str | os.PathLike | None = DEFAULT_RULES, update: bool = False) -> ExtractResult:
    """Validate the collection first (cheap), then load the model and encode it.

    When the rules file exists, the expansion cache is built too, so first searches are fast.
    ``update`` re-encodes only what changed since the features already in ``out``.
    """
    if csv is not None and images is not None:
        raise InputError("give either --csv or --images, not both")
    coll = scan_images(images) if images is not None else read_captions(csv or "data/captions.csv")
    previous = None
    if update and (Path(out) / store.MANIFEST_FILE).is_file():
        previous = store.load(out)
        previous.check_model(model)
    encoder = encoder or load_encoder(model, checkpoint, device)
    if previous is not None and previous.model_fingerprint != encoder.fingerprint:
        raise InputError(f"--update: {out} was built with other {model} weights ({previous.model_fingerprint}, "
                         f"now {encoder.fingerprint}); run a full extract without --update")
    result = extract(encoder, coll, out, batch_size=batch_size, num_workers=num_workers, quiet=quiet,
                     max_pixels=max_pixels, checkpoint=checkpoint, previous=previous)
    if rules is not None and Path(rules).is_file():
        table = load_rules(rules)
        store.save_expansion_cache(out, *build_expansion_cache(encoder, table), encoder.fingerprint, table.sha256)
    return result


def encoder_for(manifest: dict, checkpoint: str | None = None, device: str = "auto") -> Encoder:
    """The encoder that made a features folder (its checkpoint too, unless another is given)."""
    name = manifest["model"]["name"]
    saved = manifest["model"].get("checkpoint")
    if checkpoint is None and saved and Path(saved).exists():
        checkpoint = saved
    return load_encoder(name, checkpoint, device)


def open_searcher(features: str | os.PathLike = "outputs", model: str | None = None,
                  checkpoint: str | None = None, rules: str | os.PathLike | None = DEFAULT_RULES,
                  device: str = "auto", encoder: Encoder | None = None, exact: bool = False) -> Searcher:
    """Load features and the rules table (``rules=None``: no expansion); the model loads on first need.

    An ANN index beside the features is used unless ``exact`` is set.

    The expansion cache beside the features is used when it matches the model and rules,
    and rebuilt (which loads the model) when it does not.
    """
    feats = store.load(features, with_text=False)
    feats.check_model(model)
    table: RuleTable | None = load_rules(rules) if rules is not None else None
    index = None
    if not exact and (Path(features) / ann.INDEX_FILE).is_file():
        index = ann.load(features, feats.fingerprint)
    searcher = Searcher(feats, encoder or (lambda: encoder_for(feats.manifest, checkpoint, device)), table, ann=index)
    if table is not None:
        fingerprint = feats.model_fingerprint
        cache = store.load_expansion_cache(features, fingerprint, table.sha256)
        if cache is None:
            log.info("building the expansion cache for %s", table.path)
            cache = build_expansion_cache(searcher.encoder, table)
            store.save_expansion_cache(features, *cache, fingerprint, table.sha256)
        searcher.use_cache(*cache)
    return searcher


def record_for(searcher: Searcher, result: SearchResult) -> dict:
    rules = searcher.rules
    used = rules is not None and result.expand
    return searchlog.make_record(
        result, model_fingerprint=searcher.model_fingerprint, features_fingerprint=searcher.store.fingerprint,
        features_dir=str(searcher.store.folder), rules_sha256=rules.sha256 if used else None,
        rules_path=rules.path if used else None)


def search(searcher: Searcher, query: str, k: int = 5, expand: bool = True,
           log_dir: str | os.PathLike | None = None) -> tuple[SearchResult, dict]:
    """Search and append the record to the log in ``log_dir`` (the features folder by default)."""
    result = searcher.search_text(query, k=k, expand=expand)
    record = record_for(searcher, result)
    searchlog.append(log_dir if log_dir is not None else searcher.store.folder, record)
    return result, record


def replay_log(log_path: str | os.PathLike, features: str | os.PathLike | None = None,
               device: str = "auto") -> list[searchlog.ReplayOutcome]:
    """Re-run every logged query against current (or other) features and rules, without logging again."""
    records = list(searchlog.read_records(log_path))
    searchers: dict[tuple, Searcher] = {}

    def run(record: dict) -> dict:
        folder = str(features or record["features_dir"])
        rules = record.get("rules_path") if record["expand"] else None
        key = (folder, rules)
        if key not in searchers:
            encoder = next((s.encoder for s in searchers.values() if s.store.folder == Path(folder)), None)
            searchers[key] = open_searcher(folder, rules=rules, device=device, encoder=encoder)
        searcher = searchers[key]
        return record_for(searcher, searcher.search_text(record["query"], k=record["k"], expand=record["expand"]))

    return searchlog.replay(records, run)


def evaluate(features: str | os.PathLike = "outputs", queries: str | os.PathLike | None = None,
             rules: str | os.PathLike | None = DEFAULT_RULES, compare_expansion: bool = False,
             device: str = "auto", encoder: Encoder | None = None) -> dict:
    """Text-to-image and image-to-text metrics over a features folder (its captions or a query file).

    With ``compare_expansion`` the text-to-image metrics come twice: ``no_expansion`` and ``expansion``.
    """
    from . import evaluate as ev

    feats = store.load(features)
    searcher = Searcher(feats, encoder or encoder_for(feats.manifest, device=device),
                        load_rules(rules) if rules is not None else None)
    qs = ev.file_queries(queries, feats.manifest) if queries else ev.caption_queries(feats.manifest)
    modes = [False, True] if compare_expansion else [rules is not None]
    result: dict = {"model": feats.model, "queries": len(qs.queries), "images": feats.image_features.shape[0]}
    t2i = {("expansion" if m else "no_expansion"): ev.text_to_image(searcher.query_vectors(qs.queries, m),
                                                                       feats.image_features, qs.relevant)
           for m in modes}
    result["text_to_image"] = t2i if compare_expansion else next(iter(t2i.values()))
    if feats.manifest["captions"]:
        texts = list(dict.fromkeys(c["text"] for c in feats.manifest["captions"]))
        result["image_to_text"] = ev.image_to_text(feats.manifest, feats.image_features,
                                                   searcher.encoder.encode_texts(texts), texts)
    return result


def demo_benchmark(workdir: str | os.PathLike, rules: str | os.PathLike = DEFAULT_RULES, device: str = "auto",
                   quiet: bool = True) -> dict:
    """The held-out demo benchmark: a collection drawn with seed 2000 (training used 1000, the demo data 0),
    searched with canonical and paraphrased queries, with and without expansion."""
    import csv as csv_module

    from .demo_data import benchmark_queries, make_collection

    workdir = Path(workdir)
    collection = make_collection(workdir / "collection", per_pair=3, seed=2000)
    out = workdir / "features"
    extract_features(csv=collection, model="demo", out=out, device=device, quiet=quiet)
    encoder = encoder_for(store.read_manifest(out), device=device)
    report = {}
    for name, rows in benchmark_queries(collection).items():
        path = workdir / f"{name}.csv"
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv_module.writer(fh)
            writer.writerow(["query", "image_path"])
            writer.writerows((q, str(collection.parent / p)) for q, p in rows)
        report[name] = evaluate(out, queries=path, rules=rules, compare_expansion=True,
                                encoder=encoder)["text_to_image"]
    return report


def build_index(features: str | os.PathLike = "outputs", kind: str = "auto", fp16: bool = False) -> dict:
    """Build the ANN index beside a features folder; returns what was built (kind, time, memory, size)."""
    feats = store.load(features, with_text=False)
    built = ann.build(feats.image_matrix(), kind=kind, fp16=fp16)
    ann.save(features, built, feats.fingerprint)
    return built.meta
