"""The Ray pipeline feeding Vespa inline, and the search job answering through Vespa's /search/ API.

The Vespa side is the fake h2c server; its /search/ answers come from the independent rank-expression
evaluation (tests/vespa/rank_eval.py) over the documents the pipeline actually fed.
"""

from __future__ import annotations

import json

import pytest

from pipelines import index
from pipelines.driver import run_index
from tests.helpers import compose_config, index_config
from tests.vespa import rank_eval
from tests.vespa.conftest import vespa_id
from tests.vespa.fake_vespa import FakeVespa, Status
from tests.vespa.schema_check import validator


@pytest.fixture(scope="module")
def fed(ray_cluster, tiny_model_dir, sample_corpus, tmp_path_factory):
    server = FakeVespa(validator=validator())
    server.start()
    server.search_handler = lambda body: rank_eval.search_handler(server.documents)(body)
    # Every 9th put is throttled once: inline feeding must retry inside the Ray sink.
    server.fault = lambda r: Status(429, "overloaded") if r.method == "POST" and r.index % 9 == 4 else None
    out = tmp_path_factory.mktemp("vespa-inline-index")
    cfg = index_config(
        f"source.location={sample_corpus}",
        f"output.location={out}",
        "vespa.inline=true",
        f"vespa.endpoint.url={server.url}",
        "vespa.feed.backoff_initial_s=0.05",
    )
    report = run_index(cfg)
    server.fault = None
    yield server, out, report
    server.stop()


def test_inline_feed_puts_every_indexed_page_once(fed):
    server, out, report = fed
    pages = index.IndexLocation(str(out)).read_pages(["page_id", "doc_id", "title"])
    page_ids = pages.column("page_id").to_pylist()
    assert report["pages_indexed"] == len(page_ids) == 19
    assert report["written"]["vespa_acked"] == 19, "fed by the Ray sink, not by the final reconcile"
    assert report["vespa"]["complete"] and report["vespa"]["puts_planned"] == 0
    assert set(server.documents) == {vespa_id(p) for p in page_ids}
    assert all(server.put_counts[vespa_id(p)] == 1 for p in page_ids)
    assert any(r.status == 429 for r in server.requests)
    stored = server.documents[vespa_id(page_ids[0])]
    assert stored["title"] == pages.column("title")[0].as_py() and stored["thumbnail"]
    assert not server.errors


def test_search_through_vespa_matches_local_search(fed, sample_corpus):
    from jobs.search import run_search

    server, out, _ = fed
    common = [
        f"index={out}",
        f"queries_file={sample_corpus / 'queries.jsonl'}",
        "limit_queries=3",
        "top_k=5",
        "format=jsonl",
    ]
    local_cfg = compose_config("search", common)
    vespa_cfg = compose_config("search", [*common, f"vespa.endpoint.url={server.url}", "vespa.query.target_hits=50"])
    # The rows the job prints with format=jsonl (the CLI itself is tested in tests/jobs/test_search_job.py).
    local_hits = run_search(local_cfg)
    vespa_hits = run_search(vespa_cfg)
    assert len(local_hits) == len(vespa_hits) == 15
    swapped = []
    for a, b in zip(local_hits, vespa_hits, strict=True):
        assert (a["query"], a["rank"]) == (b["query"], b["rank"])
        # two_phase re-ranks float vectors: float16 locally, bfloat16 in Vespa (relative error up to ~2^-9 per cell).
        assert a["score"] == pytest.approx(b["score"], rel=2e-3)
        if a["page_id"] != b["page_id"]:  # only a near tie may swap (the scores above agree within the tolerance)
            swapped.append((a["query"], a["rank"], a["page_id"], b["page_id"], a["score"], b["score"]))
            continue
        assert a["source_uri"] == b["source_uri"] and a["page_number"] == b["page_number"]
    assert len(swapped) <= 2, swapped
    bodies = [r.body for r in server.requests if r.path.startswith("/search/")]
    assert len(bodies) == 3
    body = json.loads(bodies[0])
    assert body["ranking.profile"] == "two_phase" and "nearestNeighbor(embedding,rq0)" in body["yql"]


def test_index_job_summary_reports_the_feed(fed, capsys):
    from jobs.index import print_summary

    _, _, report = fed
    print_summary(report)
    out = capsys.readouterr().out
    assert "19 pages fed inline, 0 more at the end, 0 stale pages removed, 0 failed, 0 remaining" in out
