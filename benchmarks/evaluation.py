"""Retrieval evaluation runner: index a dataset with several configs, run its queries, compare the metrics.

    python -m jobs.evaluate dataset=<dir> model=tiny [backend=local] [key=value ...]
    python -m jobs.evaluate dataset=hf://datasets/vidore/docvqa_test_subsampled_beir model=colqwen2.5-v0.2

:func:`run_evaluation` does the work in-process (``jobs.evaluate`` is its command-line entry point);
it raises, never exits. Datasets and metrics are :mod:`pipelines.evaluation`; the report is rendered
by :mod:`benchmarks.evaluation_report`.

**Dataset layout** (``dataset=<dir>``; BEIR-style files)::

    <dir>/corpus/**/*.pdf      the documents (without corpus/: the PDFs under <dir> itself)
    <dir>/queries.jsonl        {"_id": "q1", "text": "which region had the highest Q4 revenue?"}
    <dir>/qrels/test.tsv       header "query-id<TAB>corpus-id<TAB>score", then one judged page per line

A page's **corpus id** is ``<PDF path relative to the corpus directory, without .pdf>#<page number>``
(pages from 1): ``annual_report_2023#2``, ``2021/q4/report#13``. ``score >= 1`` is relevant. Also read
directly: the sample corpus (``python -m pipelines.testing.corpus DIR``: ``queries.jsonl`` lines ``{"query",
"file_name", "page_number"}``, turned into query ids ``q001``… and one relevant page each), and ViDoRe
BEIR parquet datasets (``<root>/{corpus,queries,qrels}/test-*.parquet``) on the Hugging Face hub or
copied locally; their page images become one-page PDFs ``<output_dir>/dataset/corpus/<corpus-id>.pdf``
(corpus id ``<corpus-id>#1``). Details: :mod:`pipelines.evaluation`.

**What runs.** For each ``grid.pool_factors`` value the corpus is indexed by
:func:`pipelines.driver.run_index` into ``<output_dir>/indexes/pool<k>`` (the index job's config
groups and overrides apply: ``backend``, ``rasterize.*``, ``ray.*``, ...). Every query is embedded once
with ``model`` and ranked over each index with each ``grid.profiles`` profile by
:class:`pipelines.search.Searcher` (the local index, as ``jobs.search`` does) to depth ``top_k``. With
``vespa.endpoint.url`` set, each index is also fed to Vespa while it is built and every query is ranked
server-side as well (rows with search ``vespa``); the cluster should hold only this dataset, and since
page ids do not depend on the config, feeding a config replaces the previous one's vectors.

**Output.** ``<report_dir>/evaluation.md`` (side-by-side table, dataset, model, parameters, machine,
versions), ``<report_dir>/evaluation.json`` (the same as data), ``<report_dir>/figures/evaluation.png``,
and per config ``<output_dir>/runs/<config>.<search>.trec`` plus per-query metrics. With a TEST model
(``model=tiny``) the numbers mean nothing, and every output says so.

Errors: :class:`~pipelines.errors.ConfigError` or :class:`~pipelines.evaluation.DatasetError` before any
indexing; :class:`EvaluationError` when Vespa cannot be queried. Problems that do not invalidate the
comparison (an input file unaccounted for, an incomplete Vespa feed) are listed in ``summary["problems"]``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmarks.evaluation_report import write_report
from pipelines import environment, evaluation, index
from pipelines.errors import ConfigError, require_int
from pipelines.models import registry
from pipelines.search import FLOAT_PROFILES, MAX_TOP_K, PROFILES, LocalIndex, QueryModel, Searcher, SearchError
from pipelines.vespa import config as vespa_config

logger = logging.getLogger(__name__)

#: This job's own keys; the rest of its config is the index job's (conf/evaluate.yaml includes index.yaml).
EVALUATION_KEYS = (
    "dataset",
    "split",
    "dataset_storage_options",
    "output_dir",
    "report_dir",
    "grid",
    "top_k",
    "rerank_count",
    "limit_queries",
    "figure",
)
TEST_MODEL_WARNING = (
    "TEST MODEL: '{model}' has random weights. These numbers say nothing about retrieval quality; "
    "they only show that indexing, search and scoring run end to end."
)


class EvaluationError(RuntimeError):
    """An indexing run or the Vespa search failed in a way that makes the comparison invalid."""


def index_config(cfg: DictConfig, corpus_dir: Path, location: Path, pool_factor: int, feed_vespa: bool) -> DictConfig:
    """The index job's config for one pool factor: this config without the evaluation keys, per-run values set.

    The index is rebuilt (``output.mode=overwrite``): an evaluation must not reuse pages of an earlier run.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    node = OmegaConf.create({key: value for key, value in plain.items() if key not in EVALUATION_KEYS})
    node.source.location = str(corpus_dir)
    node.output.location = str(location)
    node.output.mode = "overwrite"
    node.pooling.pool_factor = int(pool_factor)
    node.vespa.inline = bool(feed_vespa)
    return node


def _settings(cfg: DictConfig) -> tuple[list[int], list[str], Any, Any]:
    """Validated grid, profiles and Vespa endpoint/query settings; raises ConfigError."""
    pool_factors = [int(k) for k in cfg.grid.pool_factors]
    profiles = [str(p) for p in cfg.grid.profiles]
    if not pool_factors or len(set(pool_factors)) != len(pool_factors) or min(pool_factors) < 1:
        msg = f"grid.pool_factors must be distinct integers >= 1, got {pool_factors}"
        raise ConfigError(msg)
    unknown = [p for p in profiles if p not in PROFILES]
    if not profiles or unknown:
        msg = f"grid.profiles must be a non-empty list of {PROFILES}, got {profiles}"
        raise ConfigError(msg)
    # The run depth: at least 10 for nDCG@10 and Recall@10, at most what a search may return.
    require_int("top_k", cfg.top_k, minimum=10, maximum=MAX_TOP_K)
    require_int("rerank_count", cfg.rerank_count)
    require_int("limit_queries", cfg.limit_queries, optional=True)
    endpoint = vespa_config.endpoint(cfg, required=False)
    query_settings = vespa_config.settings(cfg, "query")
    return pool_factors, profiles, endpoint, query_settings


def run_evaluation(cfg: DictConfig, command: str | None = None) -> dict[str, Any]:
    """Run the evaluation described by ``cfg``; returns the results (also written as JSON and Markdown).

    Raises :class:`ConfigError` or :class:`pipelines.evaluation.DatasetError` before any indexing
    when the config or the dataset is unusable, and :class:`EvaluationError` when Vespa cannot be queried.
    """
    if OmegaConf.select(cfg, "dataset", throw_on_missing=False) in (None, "", "???"):
        msg = "missing required config value 'dataset': set dataset=<dir> or dataset=hf://datasets/<owner>/<name>"
        raise ConfigError(msg)
    pool_factors, profiles, endpoint, query_settings = _settings(cfg)
    try:
        spec = registry.get_spec(str(cfg.model.name))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    output_dir = Path(cfg.output_dir).absolute()
    report_dir = Path(cfg.report_dir).absolute()
    dataset = evaluation.load_dataset(
        str(cfg.dataset),
        output_dir / "dataset",
        split=str(cfg.split),
        storage_options=OmegaConf.to_container(cfg.dataset_storage_options, resolve=True),
        image_dpi=float(cfg.rasterize.max_dpi),
    )
    query_ids = dataset.evaluated_queries
    query_ids = query_ids[: cfg.limit_queries]
    qrels = {qid: dataset.qrels[qid] for qid in query_ids}
    logger.info(
        "dataset %s (%s): %d queries evaluated, corpus %s", cfg.dataset, dataset.layout, len(qrels), dataset.corpus_dir
    )

    from pipelines.driver import run_index

    # One query encoder for every searcher: queries are encoded once and ranked over every index.
    model = QueryModel(
        spec.name,
        cfg.model.name_or_path,
        cfg.model.cache_dir,
        cfg.model.device,
        cfg.model.dtype,
        bool(cfg.model.trust_remote_code),
    )
    encoder = model.load()
    texts = [dataset.queries[qid] for qid in query_ids]
    started = time.perf_counter()
    query_vectors = encoder.embed_queries(texts)
    encode_ms = 1000 * (time.perf_counter() - started) / max(1, len(query_ids))
    searches = ["local", "vespa"] if endpoint.configured else ["local"]
    options = {"top_k": int(cfg.top_k), "rerank_count": int(cfg.rerank_count), "encoder": encoder}
    vespa = (
        Searcher(model, endpoint=endpoint, query_settings=query_settings, **options) if endpoint.configured else None
    )

    aliases = evaluation.corpus_aliases(dataset.corpus_dir)
    indexes, results, problems = [], [], []
    chance = None
    for pool_factor in pool_factors:
        location = output_dir / "indexes" / f"pool{pool_factor}"
        report = run_index(index_config(cfg, dataset.corpus_dir, location, pool_factor, endpoint.configured))
        problems.extend(_index_problems(report))
        pages = index.IndexLocation(str(location)).read_pages()
        columns = (pages.column(name).to_pylist() for name in ("doc_id", "source_uri", "page_number"))
        corpus_ids = [
            evaluation.page_corpus_ids(dataset.corpus_dir, aliases, *row) for row in zip(*columns, strict=True)
        ]
        judged = {cid for judged in qrels.values() for cid, score in judged.items() if score > 0}
        missing = sorted(judged - {cid for ids in corpus_ids for cid in ids})
        indexes.append(
            {
                "pool_factor": pool_factor,
                "location": str(location),
                "config_hash": report["config_hash"],
                "pages_indexed": report["pages_indexed"],
                "files_failed": report["files_failed_entirely"],
                "vectors_before_pooling": report["vectors_before_pooling"],
                "vectors_stored": report["vectors_stored"],
                "vectors_per_page": round(report["vectors_stored"] / max(1, report["pages_indexed"]), 1),
                "index_wall_seconds": report["wall_seconds"],
                "relevant_pages_not_indexed": len(missing),
                "relevant_pages_not_indexed_examples": missing[:5],
            }
        )
        if chance is None:  # every index holds the same pages: one chance reference for all
            universe = [cid for ids in corpus_ids for cid in ids]
            chance = evaluation.chance_metrics(qrels, universe, int(cfg.top_k)) if universe else None
        local = None
        if len(pages):  # nothing indexed: every query scores 0
            load_float = bool(set(profiles) & set(FLOAT_PROFILES))  # two_phase re-ranks float vectors too
            local = Searcher(model, local=LocalIndex(pages, load_float=load_float), **options)
        for profile in profiles:
            for search in searches:
                config = f"pool{pool_factor}/{profile}"
                started = time.perf_counter()
                searcher = local if search == "local" else vespa
                ranked = _ranking(
                    searcher, query_ids, query_vectors, texts, profile, corpus_ids, dataset, aliases, cfg
                )
                search_ms = 1000 * (time.perf_counter() - started) / max(1, len(query_ids))
                means, per_query = evaluation.compute_metrics(qrels, {q: [c for c, _ in h] for q, h in ranked.items()})
                name = f"pool{pool_factor}.{profile}.{search}"
                evaluation.write_trec_run(output_dir / "runs" / f"{name}.trec", ranked, name)
                (output_dir / "runs" / f"{name}.per_query.json").write_text(json.dumps(per_query, indent=1))
                results.append(
                    {
                        "config": config,
                        "pool_factor": pool_factor,
                        "profile": profile,
                        "binary_first_phase": profile != "float",
                        "search": search,
                        "queries": len(per_query),
                        "metrics": {k: round(v, 4) for k, v in means.items()},
                        "search_ms_per_query": round(search_ms, 2),
                        "run_file": str(output_dir / "runs" / f"{name}.trec"),
                    }
                )
                logger.info("%s (%s): %s", config, search, results[-1]["metrics"])

    summary = {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command or f"python -m jobs.evaluate dataset={cfg.dataset} model={spec.name}",
        "is_test_model": spec.is_test_model,
        "warning": TEST_MODEL_WARNING.format(model=spec.name) if spec.is_test_model else None,
        "dataset": {
            "source": str(cfg.dataset),
            "layout": dataset.layout,
            "split": str(cfg.split),
            "corpus_dir": str(dataset.corpus_dir),
            "queries_in_file": len(dataset.queries),
            "queries_evaluated": len(qrels),
            "queries_skipped": len(dataset.skipped_queries),
            "relevant_judgments": sum(1 for judged in qrels.values() for s in judged.values() if s > 0),
            "notes": dataset.notes,
        },
        "model": {
            "name": spec.name,
            "checkpoint": encoder.name_or_path,
            "is_test_model": spec.is_test_model,
            "device": str(encoder.device),
            "dtype": str(cfg.model.dtype),
        },
        "parameters": {
            "pool_factors": pool_factors,
            "profiles": profiles,
            "searches": searches,
            "top_k": int(cfg.top_k),
            "rerank_count": int(cfg.rerank_count),
            "backend": str(cfg.backend),
            "max_pixels": int(cfg.rasterize.max_pixels or spec.max_pixels),
            "max_dpi": float(cfg.rasterize.max_dpi),
            "image_format": str(cfg.rasterize.image_format),
            "query_encode_ms_per_query": round(encode_ms, 2),
            "vespa_query": OmegaConf.to_container(cfg.vespa.query, resolve=True) if endpoint.configured else None,
        },
        "machine": environment.machine_info(),
        "versions": environment.versions(environment.DEFAULT_PACKAGES),
        "indexes": indexes,
        "results": results,
        "chance": {k: round(v, 4) for k, v in chance.items()} if chance else None,
        "problems": problems,
        "outputs": {"indexes": str(output_dir / "indexes"), "runs": str(output_dir / "runs")},
    }
    write_report(summary, report_dir, figure=bool(cfg.figure))
    return summary


def _index_problems(report: dict) -> list[str]:
    problems = []
    if report["files_unaccounted"]:
        problems.append(f"{report['index']}: {len(report['files_unaccounted'])} input files unaccounted for")
    if report.get("error_rate_exceeded"):
        problems.append(f"{report['index']}: {report['files_failed_entirely']} files failed entirely (over the limit)")
    vespa = report.get("vespa")
    if vespa and not vespa["complete"]:
        problems.append(f"{report['index']}: Vespa feed incomplete ({vespa['failures_total']} operations failed)")
    return problems


def _expand(hits: list[tuple[list[str], float]], depth: int) -> list[tuple[str, float]]:
    """Ranked (corpus ids, score) hits as ranked corpus ids: copies of one document in corpus-id order."""
    return [(cid, score) for ids, score in hits for cid in ids][:depth]


def _ranking(searcher, query_ids, query_vectors, texts, profile, corpus_ids, dataset, aliases, cfg):
    """``{query id: [(corpus id, score)]}`` of ``searcher`` (``None``: an empty index), to depth ``top_k``.

    Local hits are named by the corpus ids of their index row; Vespa hits by their summary fields.
    """
    if searcher is None:
        return {qid: [] for qid in query_ids}
    try:
        hits = searcher.search_vectors(query_vectors, texts, profile=profile)
    except SearchError as exc:
        raise EvaluationError(str(exc)) from exc

    def ids(hit) -> list[str]:
        if hit.page_index is not None:
            return corpus_ids[hit.page_index]
        return evaluation.page_corpus_ids(dataset.corpus_dir, aliases, hit.doc_id, hit.source_uri, hit.page_number)

    depth = int(cfg.top_k)
    return {
        qid: _expand([(ids(hit), hit.score) for hit in query_hits], depth)
        for qid, query_hits in zip(query_ids, hits, strict=True)
    }
