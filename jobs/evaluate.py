"""Retrieval evaluation: index a dataset with several configs, run its queries, compare the metrics.

    python -m jobs.evaluate dataset=<dir> model=tiny [backend=local] [key=value ...]
    python -m jobs.evaluate dataset=hf://datasets/vidore/docvqa_test_subsampled_beir model=colqwen2.5-v0.2

**Dataset layout** (``dataset=<dir>``; BEIR-style files)::

    <dir>/corpus/**/*.pdf      the documents (without corpus/: the PDFs under <dir> itself)
    <dir>/queries.jsonl        {"_id": "q1", "text": "which region had the highest Q4 revenue?"}
    <dir>/qrels/test.tsv       header "query-id<TAB>corpus-id<TAB>score", then one judged page per line

A page's **corpus id** is ``<PDF path relative to the corpus directory, without .pdf>#<page number>``
(pages from 1): ``annual_report_2023#2``, ``2021/q4/report#13``. ``score >= 1`` is relevant. Also read
directly: the sample corpus (``python -m pipelines.corpus DIR``: ``queries.jsonl`` lines ``{"query",
"file_name", "page_number"}``, turned into query ids ``q001``… and one relevant page each), and ViDoRe
BEIR parquet datasets (``<root>/{corpus,queries,qrels}/test-*.parquet``) on the Hugging Face hub or
copied locally; their page images become one-page PDFs ``<output_dir>/dataset/corpus/<corpus-id>.pdf``
(corpus id ``<corpus-id>#1``). Details: :mod:`pipelines.evaluation`.

**What runs.** For each ``grid.pool_factors`` value the corpus is indexed by
:func:`pipelines.pipeline.run_index` into ``<output_dir>/indexes/pool<k>`` (the index job's config
groups and overrides apply: ``backend``, ``rasterize.*``, ``ray.*``, ...). Every query is embedded once
with ``model`` and ranked over each index with each ``grid.profiles`` profile by the local search
(:class:`pipelines.search.LocalIndex`, as ``jobs.search`` does) to depth ``top_k``. With
``vespa.endpoint.url`` set, each index is also fed to Vespa while it is built and every query is ranked
server-side as well (rows with search ``vespa``); the cluster should hold only this dataset, and since
page ids do not depend on the config, feeding a config replaces the previous one's vectors.

**Output.** ``<report_dir>/evaluation.md`` (side-by-side table, dataset, model, parameters, machine,
versions), ``<report_dir>/evaluation.json`` (the same as data), ``<report_dir>/figures/evaluation.png``,
and per config ``<output_dir>/runs/<config>.<search>.trec`` plus per-query metrics. With a TEST model
(``model=tiny``) the numbers mean nothing, and every output says so.

Exit status: 0 done; 2 bad configuration or unreadable dataset; 1 report written, but some input file
was unaccounted for or some Vespa operation failed (the report says which).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from jobs._common import fail, setup_logging
from pipelines import evaluation, index
from pipelines.errors import ConfigError
from pipelines.models import registry
from pipelines.search import PROFILES, LocalIndex
from pipelines.vespa import config as vespa_config
from pipelines.vespa import query as vespa_query

logger = logging.getLogger("jobs.evaluate")

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
_VERSIONED = (
    "torch",
    "transformers",
    "colpali-engine",
    "ray",
    "numpy",
    "pyarrow",
    "ir-measures",
    "pdf2image",
    "hydra-core",
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
        msg = f"grid.profiles must be a non-empty list of {PROFILES} (hybrid needs Vespa's BM25), got {profiles}"
        raise ConfigError(msg)
    if int(cfg.top_k) < 10:
        msg = f"top_k (the run depth) must be >= 10 for nDCG@10 and Recall@10, got {cfg.top_k}"
        raise ConfigError(msg)
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
    if cfg.limit_queries:
        query_ids = query_ids[: int(cfg.limit_queries)]
    qrels = {qid: dataset.qrels[qid] for qid in query_ids}
    logger.info(
        "dataset %s (%s): %d queries evaluated, corpus %s", cfg.dataset, dataset.layout, len(qrels), dataset.corpus_dir
    )

    from pipelines.models.encoder import MultiVectorEncoder
    from pipelines.pipeline import run_index

    encoder = MultiVectorEncoder(
        spec.name, cfg.model.name_or_path, cfg.model.cache_dir, cfg.model.device, cfg.model.dtype
    )
    started = time.perf_counter()
    query_vectors = encoder.embed_queries([dataset.queries[qid] for qid in query_ids])
    encode_ms = 1000 * (time.perf_counter() - started) / max(1, len(query_ids))
    searches = ["local", "vespa"] if endpoint.configured else ["local"]

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
        local = LocalIndex(pages, load_float="float" in profiles) if len(pages) else None
        for profile in profiles:
            for search in searches:
                config = f"pool{pool_factor}/{profile}"
                started = time.perf_counter()
                if search == "local":
                    ranked = _local_ranking(local, query_ids, query_vectors, corpus_ids, profile, cfg)
                else:
                    ranked = _vespa_ranking(
                        endpoint, query_settings, query_ids, query_vectors, dataset, aliases, profile, cfg
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
        "machine": machine_info(),
        "versions": versions(),
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


def _local_ranking(local, query_ids, query_vectors, corpus_ids, profile, cfg) -> dict[str, list[tuple[str, float]]]:
    if local is None:  # nothing was indexed: every query scores 0
        return {qid: [] for qid in query_ids}
    ranked = {}
    for qid, vectors in zip(query_ids, query_vectors, strict=True):
        hits = local.search(vectors, int(cfg.top_k), profile, int(cfg.rerank_count))
        ranked[qid] = _expand([(corpus_ids[hit.page_index], hit.score) for hit in hits], int(cfg.top_k))
    return ranked


def _vespa_ranking(endpoint, settings, query_ids, query_vectors, dataset, aliases, profile, cfg):
    if profile not in vespa_query.PROFILES:
        msg = f"profile {profile!r} is not a Vespa rank profile ({vespa_query.PROFILES})"
        raise EvaluationError(msg)
    texts = [dataset.queries[qid] for qid in query_ids]
    try:
        hits = vespa_query.search(
            endpoint,
            list(zip(query_vectors, texts, strict=True)),
            profile,
            int(cfg.top_k),
            settings,
            rerank_count=int(cfg.rerank_count),
        )
    except vespa_query.VespaQueryError as exc:
        msg = f"Vespa at {endpoint.safe_url}: {exc}"
        raise EvaluationError(msg) from exc
    ranked = {}
    for qid, query_hits in zip(query_ids, hits, strict=True):
        pages = [
            (
                evaluation.page_corpus_ids(
                    dataset.corpus_dir, aliases, hit["doc_id"], hit["source_uri"], hit["page_number"]
                ),
                hit["score"],
            )
            for hit in query_hits
        ]
        ranked[qid] = _expand(pages, int(cfg.top_k))
    return ranked


# ---------------------------------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and accelerator of this machine (what the timings ran on)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    import torch

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in _VERSIONED:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    try:
        banner = subprocess.run(["pdftoppm", "-v"], capture_output=True, text=True, timeout=10).stderr.split("\n")[0]
        out["poppler"] = banner.split()[-1] if banner else "unknown"
    except (OSError, subprocess.SubprocessError):
        out["poppler"] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def write_report(summary: dict[str, Any], report_dir: Path, figure: bool = True) -> None:
    """Write ``evaluation.json``, ``evaluation.md`` and (``figure``) ``figures/evaluation.png`` in ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    figure_path = report_dir / "figures" / "evaluation.png"
    if figure:
        plot_results(summary, figure_path)
    (report_dir / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    (report_dir / "evaluation.md").write_text(render_markdown(summary, figure_path if figure else None, report_dir))


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_markdown(summary: dict[str, Any], figure_path: Path | None = None, report_dir: Path | None = None) -> str:
    """The human-readable report: warning first, then the side-by-side table and everything it depends on."""
    ds, model, params = summary["dataset"], summary["model"], summary["parameters"]
    lines = ["# Retrieval evaluation", ""]
    if summary["warning"]:
        lines += [
            f"> **⚠️ {summary['warning']}**",
            "> Use a real checkpoint (e.g. `model=colqwen2.5-v0.2`, needs the Hugging Face hub) for meaningful "
            "figures.",
            "",
        ]
    lines += [
        f"Dataset `{ds['source']}` ({ds['layout']} layout, split `{ds['split']}`): {ds['queries_evaluated']} "
        f"queries evaluated, model **{model['name']}**{' (TEST MODEL)' if model['is_test_model'] else ''}, "
        f"run depth {params['top_k']}. Generated {summary['generated_at']}.",
        "",
        "## Results",
        "",
    ]
    metric_names = list(evaluation.METRIC_NAMES)
    header = ["config", "pool factor", "profile", "binary 1st phase", "search", "vectors/page", *metric_names]
    header.append("search ms/query")
    lines += [_row(header), _row(["---"] * 5 + ["---:"] * (len(header) - 5))]
    per_page = {entry["pool_factor"]: entry["vectors_per_page"] for entry in summary["indexes"]}
    for result in summary["results"]:
        lines.append(
            _row(
                [
                    f"`{result['config']}`",
                    result["pool_factor"],
                    result["profile"],
                    "on" if result["binary_first_phase"] else "off (exact)",
                    result["search"],
                    per_page[result["pool_factor"]],
                    *(f"{result['metrics'][name]:.3f}" for name in metric_names),
                    result["search_ms_per_query"],
                ]
            )
        )
    if summary.get("chance"):
        chance = summary["chance"]
        values = [f"{chance[name]:.3f}" for name in metric_names]
        lines.append(_row(["random ranking (chance)", "", "", "", "", "", *values, ""]))
    lines += [
        "",
        "Metrics are means over all evaluated queries, computed with ir-measures (`nDCG@5`, `nDCG@10`, `R@1`, "
        f"`R@5`, `R@10`, `RR`); MRR is the reciprocal rank of the first relevant page within the top "
        f"{params['top_k']}. A query with no relevant page retrieved scores 0. `two_phase` ranks every page by "
        f"hamming MaxSim over the binary vectors and re-ranks the top {params['rerank_count']} with the float "
        "query against the unpacked bits (the Vespa profile); `float` is exact MaxSim over the stored float16 "
        "vectors. The chance row is the mean of 20 seeded random orderings of the indexed pages. Search "
        "ms/query is ranking time only (query encoding is listed below).",
        "",
    ]
    if figure_path is not None:
        shown = os.path.relpath(figure_path, report_dir) if report_dir else str(figure_path)
        lines += [f"![metrics per config]({shown})", ""]
    lines += [
        "## Indexes",
        "",
        _row(["pool factor", "pages", "vectors before → after pooling", "vectors/page", "relevant pages not indexed"]),
        _row(["---:"] * 5),
    ]
    lines += [
        _row(
            [
                entry["pool_factor"],
                entry["pages_indexed"],
                f"{entry['vectors_before_pooling']} → {entry['vectors_stored']}",
                entry["vectors_per_page"],
                entry["relevant_pages_not_indexed"],
            ]
        )
        for entry in summary["indexes"]
    ]
    lines += [
        "",
        "## Dataset",
        "",
        f"- source: `{ds['source']}`, layout `{ds['layout']}`, corpus `{ds['corpus_dir']}`",
        f"- queries: {ds['queries_in_file']} in the queries file, {ds['queries_evaluated']} evaluated, "
        f"{ds['queries_skipped']} without a relevant page; {ds['relevant_judgments']} relevant judgments",
        *(f"- {note}" for note in ds["notes"]),
        "",
        "## Model and parameters",
        "",
        f"- model: `{model['name']}` ({model['checkpoint']}), device {model['device']}, dtype {model['dtype']}"
        + (" — **TEST MODEL, random weights**" if model["is_test_model"] else ""),
        f"- grid: pool factors {params['pool_factors']} × profiles {params['profiles']}; searches "
        f"{params['searches']}; run depth {params['top_k']}; rerank_count {params['rerank_count']}",
        f"- indexing: backend `{params['backend']}`, pixel budget {params['max_pixels']} per page, max "
        f"{params['max_dpi']:g} dpi, {params['image_format']} images between stages",
        f"- query encoding: {params['query_encode_ms_per_query']} ms per query",
    ]
    if params.get("vespa_query"):
        lines.append(f"- Vespa query settings: `{json.dumps(params['vespa_query'])}`")
    machine = summary["machine"]
    lines += [
        "",
        "## Machine and versions",
        "",
        f"- {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM, "
        f"GPU: {machine['gpu'] or 'none'}; {machine['platform']}",
        "- " + ", ".join(f"{name} {version}" for name, version in summary["versions"].items()),
    ]
    if summary["problems"]:
        lines += ["", "## Problems", "", *(f"- {problem}" for problem in summary["problems"])]
    lines += [
        "",
        "## Reproduce",
        "",
        "```bash",
        *(
            [f"python -m pipelines.corpus {ds['source']}   # regenerates the sample corpus (deterministic)"]
            if ds["layout"] == "sample"
            else []
        ),
        summary["command"],
        "```",
        "",
        f"Run files (TREC format) and per-query metrics: `{summary['outputs']['runs']}`.",
        "",
    ]
    return "\n".join(lines)


def plot_results(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per metric, one bar per (config, search)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(evaluation.METRIC_NAMES)
    results = summary["results"]
    width = 0.8 / max(1, len(results))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, result in enumerate(results):
        xs = [m + (i - (len(results) - 1) / 2) * width for m in range(len(names))]
        label = result["config"] + ("" if result["search"] == "local" else f" ({result['search']})")
        ax.bar(xs, [result["metrics"][n] for n in names], width, label=label)
    if summary.get("chance"):
        for m, name in enumerate(names):
            label = "random ranking (chance)" if m == 0 else None
            ax.hlines(summary["chance"][name], m - 0.45, m + 0.45, colors="black", linestyles="dashed", label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over queries")
    title = f"{summary['dataset']['source']} — model {summary['model']['name']}"
    if summary["is_test_model"]:
        title += "\nTEST MODEL (random weights): these numbers are meaningless"
    ax.set_title(title, fontsize=10, color="firebrick" if summary["is_test_model"] else "black")
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.log_level)
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    command = " ".join(["python -m jobs.evaluate", *(shlex.quote(o) for o in overrides)])
    try:
        summary = run_evaluation(cfg, command)
    except (ConfigError, evaluation.DatasetError, FileNotFoundError) as exc:
        fail(str(exc))
    except EvaluationError as exc:
        fail(str(exc), code=1)
    report_dir = Path(cfg.report_dir)
    if summary["warning"]:
        print(f"WARNING: {summary['warning']}")
    names = list(evaluation.METRIC_NAMES)
    print(f"{'config':<22} {'search':<6} " + " ".join(f"{n:>9}" for n in names))
    for result in summary["results"]:
        values = " ".join(f"{result['metrics'][n]:>9.3f}" for n in names)
        print(f"{result['config']:<22} {result['search']:<6} {values}")
    print(f"report: {report_dir / 'evaluation.md'}")
    if summary["problems"]:
        fail("; ".join(summary["problems"]), code=1)


if __name__ == "__main__":
    sys.exit(main())
