"""Answer queries with two-phase MaxSim ranking: over a local index, or server-side in Vespa.

python -m jobs.search index=/data/index 'query="revenue by region"' [top_k=5] [format=jsonl]
python -m jobs.search index=/data/index queries_file=queries.jsonl
python -m jobs.search vespa.endpoint.url=http://vespa:8080 model=colqwen2.5-v0.2 'query="..."' [profile=hybrid]
python -m jobs.search index=/data/index 'query="..."' explain=true [explain_dir=maps]   # similarity maps per hit
python -m jobs.search index=/data/index similar_to=<page_id>                            # pages like this page

Both paths print the same columns; the query encoder is the index's model (read from ``index``; another
``model.name`` is refused), or ``model.name`` when searching Vespa without a local index. The work is
:class:`pipelines.search.Searcher`. In-process, :func:`run_search` returns the rows (and raises) and
:func:`run` prints them and returns the exit status: 0 done; 2 bad configuration or input (a setting out of
range, a query file line that is not a query, a ``model.name`` other than the index's) or no index, the message
naming the key or ``file:line``; 1 Vespa failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from jobs._common import error, setup_logging
from pipelines import queries
from pipelines.errors import ConfigError, require_int
from pipelines.search import PageHit, Searcher, SearchError


def read_queries(cfg: DictConfig) -> list[str]:
    """``query``, or the first ``limit_queries`` queries of ``queries_file`` (:func:`pipelines.queries.read_queries`:
    plain lines, or JSON objects with a ``query`` or BEIR ``text`` key). Raises :class:`ConfigError` naming the key,
    or the file and line."""
    limit = require_int("limit_queries", cfg.limit_queries, optional=True)
    if cfg.query:
        return [str(cfg.query)]
    if cfg.queries_file:
        return [query.text for query in queries.read_queries(str(cfg.queries_file))][:limit]
    msg = "nothing to search: set query='\"...\"' or queries_file=<path>"
    raise ConfigError(msg)


def snippet(text: str | None, limit: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def result_row(cfg: DictConfig, query: str, rank: int, hit: PageHit) -> dict:
    """One output row, the same for local and Vespa hits."""
    return {
        "query": query,
        "rank": rank,
        "score": round(hit.score, 4),
        "page_id": hit.page_id,
        "source_uri": hit.source_uri,
        "page_number": hit.page_number,
        "snippet": snippet(hit.text, cfg.snippet_chars),
        "model": hit.model,
    }


def run_search(cfg: DictConfig) -> list[dict]:
    """Search every query; returns one dict per hit (query, rank, score, page_id, source, page, snippet).

    With ``explain=true`` also writes each hit's similarity maps under ``explain_dir``
    (:mod:`pipelines.similarity_maps`) and adds their PNG path to its row (``similarity_map``).
    With ``similar_to=<page_id>``, lists the pages like that page instead (its page vector's nearest, local index).
    Raises :class:`ConfigError`, ``FileNotFoundError`` (no index) or :class:`SearchError` (Vespa failed).
    """
    require_int("snippet_chars", cfg.snippet_chars)
    if cfg.get("similar_to"):
        page_id = str(cfg.similar_to)
        try:
            hits = Searcher.from_config(cfg).similar_pages(page_id)
        except KeyError as exc:
            msg = f"no page {page_id!r} in the index at {cfg.index!r}"
            raise ConfigError(msg) from exc
        return [result_row(cfg, f"like {page_id}", rank, hit) for rank, hit in enumerate(hits, start=1)]
    queries = read_queries(cfg)
    searcher = Searcher.from_config(cfg)
    vectors = searcher.encode(queries)
    hits_per_query = searcher.search_vectors(vectors, texts=queries)
    rows = [
        [result_row(cfg, query, rank, hit) for rank, hit in enumerate(hits, start=1)]
        for query, hits in zip(queries, hits_per_query, strict=True)
    ]
    if cfg.get("explain"):
        from pipelines.similarity_maps import explain

        for query_rows, pngs in zip(rows, explain(cfg, searcher, queries, vectors, hits_per_query), strict=True):
            for row, png in zip(query_rows, pngs, strict=True):
                row["similarity_map"] = str(png)
    return [row for query_rows in rows for row in query_rows]


def print_results(results: list[dict], output_format: str) -> None:
    if output_format == "jsonl":
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
        if row.get("similarity_map"):
            print(f"      similarity map: {row['similarity_map']}")


def run(cfg: DictConfig) -> int:
    """Run the search job in this process: print the hits, return the exit status."""
    try:
        results = run_search(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        return error(str(exc))
    except SearchError as exc:
        return error(str(exc), code=1)
    print_results(results, cfg.format)
    return 0


@hydra.main(config_path="../conf", config_name="search", version_base="1.3")
def main(cfg: DictConfig) -> None:
    setup_logging(cfg.log_level)
    sys.exit(run(cfg))


if __name__ == "__main__":
    main()
