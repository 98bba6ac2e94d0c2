"""Answer queries with two-phase MaxSim ranking: over a local index, or server-side in Vespa.

python -m jobs.search index=/data/index 'query="revenue by region"' [top_k=5] [format=jsonl]
python -m jobs.search index=/data/index queries_file=queries.jsonl
python -m jobs.search vespa.endpoint.url=http://vespa:8080 model=colqwen2.5-v0.2 'query="..."' [profile=hybrid]

Both paths print the same columns; the query encoder is the index's model (read from ``index``),
or ``model.name`` when searching Vespa without a local index.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from jobs._common import fail, setup_logging
from pipelines import index
from pipelines.errors import ConfigError
from pipelines.models.encoder import MultiVectorEncoder
from pipelines.search import PROFILES, LocalIndex
from pipelines.vespa import config as vespa_config
from pipelines.vespa import query as vespa_query


def read_queries(cfg: DictConfig) -> list[str]:
    if cfg.query:
        return [str(cfg.query)]
    if cfg.queries_file:
        queries = []
        for line in Path(cfg.queries_file).read_text().splitlines():
            line = line.strip()
            if line:
                queries.append(json.loads(line)["query"] if line.startswith("{") else line)
        return queries[: cfg.limit_queries] if cfg.limit_queries else queries
    fail("nothing to search: set query='\"...\"' or queries_file=<path>")
    return []


def snippet(text: str | None, limit: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def result_row(cfg: DictConfig, query: str, rank: int, score: float, page: dict) -> dict:
    """One output row, the same for local and Vespa hits (``page`` has the page's summary fields)."""
    return {
        "query": query,
        "rank": rank,
        "score": round(score, 4),
        "page_id": page["page_id"],
        "source_uri": page["source_uri"],
        "page_number": page["page_number"],
        "snippet": snippet(page["text"], cfg.snippet_chars),
        "model": page["model"],
    }


def _encoder(cfg: DictConfig, index_cfg: DictConfig | None) -> tuple[MultiVectorEncoder, str]:
    if cfg.model.name:
        name, name_or_path, cache_dir = cfg.model.name, cfg.model.name_or_path, cfg.model.cache_dir
    elif index_cfg is not None:
        name = index_cfg.model.name
        name_or_path = cfg.model.name_or_path or index_cfg.model.name_or_path
        cache_dir = cfg.model.cache_dir or index_cfg.model.cache_dir
    else:
        fail(f"no index at {cfg.index!r} to read the model from; set model.name=<the model the index was built with>")
    return MultiVectorEncoder(name, name_or_path, cache_dir, cfg.model.device, cfg.model.dtype), str(name)


def _read_index_config(location: index.IndexLocation) -> DictConfig | None:
    try:
        return OmegaConf.create(location.read_text(index.CONFIG_FILE))
    except FileNotFoundError:
        return None


def run_search(cfg: DictConfig) -> list[dict]:
    """Search every query; returns one dict per hit (query, rank, score, page_id, source, page, snippet)."""
    try:
        endpoint = vespa_config.endpoint(cfg, required=False)
        query_settings = vespa_config.settings(cfg, "query")
    except ConfigError as exc:
        fail(str(exc))
    profiles = vespa_query.PROFILES if endpoint.configured else PROFILES
    if cfg.profile not in profiles:
        where = "Vespa" if endpoint.configured else "a local index (hybrid needs Vespa's BM25)"
        fail(f"profile must be one of {profiles} for {where}, got {cfg.profile!r}")
    queries = read_queries(cfg)
    location = index.IndexLocation(str(cfg.index), OmegaConf.to_container(cfg.storage_options))
    index_cfg = _read_index_config(location)
    if endpoint.configured:
        encoder, model_name = _encoder(cfg, index_cfg)
        vectors = encoder.embed_queries(queries)
        try:
            hits_per_query = vespa_query.search(
                endpoint,
                [(v, q) for v, q in zip(vectors, queries, strict=True)],
                cfg.profile,
                cfg.top_k,
                query_settings,
                rerank_count=cfg.rerank_count,
            )
        except vespa_query.VespaQueryError as exc:
            fail(f"Vespa at {endpoint.safe_url}: {exc}", code=1)
        return [
            result_row(cfg, query, rank, hit["score"], {**hit, "model": hit.get("model") or model_name})
            for query, hits in zip(queries, hits_per_query, strict=True)
            for rank, hit in enumerate(hits, start=1)
        ]
    if index_cfg is None:
        fail(f"no index at {cfg.index!r} (expected {index.CONFIG_FILE}); run jobs.index first or set index=<path>")
    pages = location.read_pages()
    local = LocalIndex(pages, load_float=cfg.profile == "float")
    encoder, _ = _encoder(cfg, index_cfg)
    results = []
    for query, vectors in zip(queries, encoder.embed_queries(queries), strict=True):
        for rank, hit in enumerate(local.search(vectors, cfg.top_k, cfg.profile, cfg.rerank_count), start=1):
            row = local.pages.slice(hit.page_index, 1).to_pylist()[0]
            results.append(result_row(cfg, query, rank, hit.score, {**row, "model": index_cfg.model.name}))
    return results


@hydra.main(config_path="../conf", config_name="search", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.log_level)
    results = run_search(cfg)
    if cfg.format == "jsonl":
        for row in results:
            print(json.dumps(row, ensure_ascii=False))
        return
    current = None
    for row in results:
        if row["query"] != current:
            current = row["query"]
            print(f"\nquery: {current}")
            if row["model"] == "tiny":
                print("  (TEST MODEL 'tiny': random weights, the ranking below is meaningless)")
        print(f"  {row['rank']:>2}. {row['score']:8.3f}  {Path(row['source_uri']).name}  page {row['page_number']}")
        if row["snippet"]:
            print(f"      {row['snippet']}")


if __name__ == "__main__":
    sys.exit(main())
