"""Answer queries over a local index with the two-phase MaxSim ranking deployed to Vespa.

python -m jobs.search index=/data/index 'query="revenue by region"' [top_k=5] [format=jsonl]
python -m jobs.search index=/data/index queries_file=queries.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from jobs._common import fail, setup_logging
from pipelines import index
from pipelines.models.encoder import MultiVectorEncoder
from pipelines.search import PROFILES, LocalIndex


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


def run_search(cfg: DictConfig) -> list[dict]:
    """Search every query; returns one dict per hit (query, rank, score, page_id, source, page, snippet)."""
    if cfg.profile not in PROFILES:
        fail(f"profile must be one of {PROFILES}, got {cfg.profile!r}")
    queries = read_queries(cfg)
    location = index.IndexLocation(str(cfg.index), OmegaConf.to_container(cfg.storage_options))
    try:
        index_cfg = OmegaConf.create(location.read_text(index.CONFIG_FILE))
    except FileNotFoundError:
        fail(f"no index at {cfg.index!r} (expected {index.CONFIG_FILE}); run jobs.index first or set index=<path>")
    pages = location.read_pages()
    local = LocalIndex(pages, load_float=cfg.profile == "float")
    encoder = MultiVectorEncoder(
        index_cfg.model.name,
        cfg.model.name_or_path or index_cfg.model.name_or_path,
        cfg.model.cache_dir or index_cfg.model.cache_dir,
        cfg.model.device,
        cfg.model.dtype,
    )
    results = []
    for query, vectors in zip(queries, encoder.embed_queries(queries), strict=True):
        for rank, hit in enumerate(local.search(vectors, cfg.top_k, cfg.profile, cfg.rerank_count), start=1):
            row = local.pages.slice(hit.page_index, 1).to_pylist()[0]
            results.append(
                {
                    "query": query,
                    "rank": rank,
                    "score": round(hit.score, 4),
                    "page_id": row["page_id"],
                    "source_uri": row["source_uri"],
                    "page_number": row["page_number"],
                    "snippet": snippet(row["text"], cfg.snippet_chars),
                    "model": index_cfg.model.name,
                }
            )
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
