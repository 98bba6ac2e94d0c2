"""The evaluation runner in-process (benchmarks.evaluation.run_evaluation): the sample corpus end to end, and
Vespa search evaluated beside local search."""

from __future__ import annotations

import json
from pathlib import Path

import ir_measures
import pytest

from pipelines import evaluation
from tests.helpers import compose_config

MEASURES = [measure for _, measure in evaluation.MEASURES]


def test_sample_corpus_end_to_end_with_the_tiny_model(sample_corpus, tiny_model_dir, tmp_path):
    from benchmarks.evaluation import run_evaluation

    cfg = compose_config(
        "evaluate",
        [
            f"dataset={sample_corpus}",
            "model=tiny",
            "backend=local",
            f"output_dir={tmp_path / 'out'}",
            f"report_dir={tmp_path / 'reports'}",
        ],
    )
    summary = run_evaluation(cfg)

    n_queries = sum(1 for line in (sample_corpus / "queries.jsonl").read_text().splitlines() if line.strip())
    assert summary["problems"] == [] and summary["dataset"]["queries_in_file"] == n_queries
    configs = {(r["pool_factor"], r["profile"]) for r in summary["results"]}
    assert configs == {(k, p) for k in (1, 2, 3) for p in ("two_phase", "float")}
    for result in summary["results"]:
        assert result["queries"] == n_queries
        assert set(result["metrics"]) == set(evaluation.METRIC_NAMES)
        assert all(0.0 <= value <= 1.0 for value in result["metrics"].values())
        # the reported means are ir-measures' over the run file the job wrote
        run = {}
        for line in Path(result["run_file"]).read_text().splitlines():
            qid, _, cid, rank, _, _ = line.split()
            run.setdefault(qid, {})[cid] = 1.0 / int(rank)
        assert len(run) == n_queries and all(len(hits) == 19 for hits in run.values())  # every page ranked
        dataset = evaluation.load_dataset(str(sample_corpus), tmp_path / "unused")
        reference = ir_measures.calc_aggregate(MEASURES, dataset.qrels, run)
        for label, measure in evaluation.MEASURES:
            assert result["metrics"][label] == pytest.approx(reference[measure], abs=1e-4)
    # the chance reference: one relevant page among 19, ranked at random
    assert summary["chance"]["Recall@10"] == pytest.approx(10 / 19, abs=0.1)
    assert summary["chance"]["Recall@1"] == pytest.approx(1 / 19, abs=0.05)
    stored = {entry["pool_factor"]: entry["vectors_stored"] for entry in summary["indexes"]}
    assert stored[1] > stored[2] > stored[3]
    assert all(
        entry["pages_indexed"] == 19 and entry["relevant_pages_not_indexed"] == 0 for entry in summary["indexes"]
    )

    report = (tmp_path / "reports" / "evaluation.md").read_text()
    assert "TEST MODEL" in report.split("## Results")[0]  # the warning comes before any number
    assert report.count("| `pool") == 6
    assert json.loads((tmp_path / "reports" / "evaluation.json").read_text())["is_test_model"] is True
    assert (tmp_path / "reports" / "figures" / "evaluation.png").stat().st_size > 10_000


def test_vespa_search_is_evaluated_beside_local_search(sample_corpus, tiny_model_dir, tmp_path):
    """With vespa.endpoint.url set, pages are fed while indexing and ranked server-side too.

    The server is the fake /document/v1 + /search/ stand-in, ranking with an independent evaluation of
    the schema's rank expressions over what was fed; ranking every page, it must score like local search.
    """
    from benchmarks.evaluation import run_evaluation
    from tests.vespa import rank_eval
    from tests.vespa.fake_vespa import FakeVespa
    from tests.vespa.schema_check import validator

    with FakeVespa(validator=validator()) as server:
        server.search_handler = lambda body: rank_eval.search_handler(server.documents)(body)
        cfg = compose_config(
            "evaluate",
            [
                f"dataset={sample_corpus}",
                "model=tiny",
                "backend=local",
                "grid.pool_factors=[3]",
                # The bit-exact profile: two_phase re-ranks float16 locally but bfloat16 in Vespa, which may swap
                # near-ties of the TEST model; its scores are compared in tests/vespa (test_rank_expressions).
                "grid.profiles=[two_phase_unpacked]",
                "limit_queries=3",
                "figure=false",
                f"vespa.endpoint.url={server.url}",
                "vespa.query.retrieval=all",
                f"output_dir={tmp_path / 'out'}",
                f"report_dir={tmp_path / 'reports'}",
            ],
        )
        summary = run_evaluation(cfg)
        assert not server.errors

    by_search = {r["search"]: r for r in summary["results"]}
    assert set(by_search) == {"local", "vespa"} and summary["problems"] == []
    assert by_search["vespa"]["queries"] == 3
    assert by_search["vespa"]["metrics"] == pytest.approx(by_search["local"]["metrics"], abs=1e-6)
    local_run = Path(by_search["local"]["run_file"]).read_text().splitlines()
    vespa_run = Path(by_search["vespa"]["run_file"]).read_text().splitlines()
    assert [line.split()[:3] for line in vespa_run] == [line.split()[:3] for line in local_run]
