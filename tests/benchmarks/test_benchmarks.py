"""The benchmarks at tiny sizes: every benchmark runs, and its numbers mean what the report says they mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import (
    cli,
    common,
    feed,
    fidelity,
    index_size,
    pipeline,
    pooling,
    rasterize,
    report,
    scale,
    search,
    vectors,
)
from pipelines.search import LocalIndex
from pipelines.stages.rasterize import target_size
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def results(tmp_path_factory, sample_corpus, shared_corpus, tiny_model_dir) -> dict:
    """Each benchmark once at a tiny size (module scope: the slow imports and model load are paid once)."""
    return {
        "rasterize": rasterize.bench_rasterize(
            size=4,
            repeats=1,
            embed_pages=2,
            sample_dir=sample_corpus,
            shared_dir=shared_corpus,
            embed_at_reference_budget=False,  # tiny weights at 602k px cost seconds per page on CPU
            memory=False,  # the process-tree memory run renders the hostile set: a benchmark, not a test
        ),
        "index_size": index_size.bench_index_size(size=4),
        "fidelity": fidelity.bench_fidelity(size=12, n_queries=6, real=False, vectors_per_page=(40, 60)),
        "search": search.bench_search(sizes=(300,), repeats=1, n_queries=5),
        "feed": feed.bench_feed(size=3, vector_counts=(16,)),
        "pooling": pooling.bench_pooling(size=2, repeats=1, vector_counts=(48,)),
        "hybrid": search.bench_hybrid(),
    }


def test_rasterize_counts_the_pages_poppler_counts(results, sample_corpus, shared_corpus):
    res = results["rasterize"]["results"]
    paths = {p.name: p for p in [*sample_corpus.glob("*.pdf"), *shared_corpus.glob("*.pdf")]}
    assert res["documents"], "no document was timed"
    for doc in res["documents"]:
        assert doc["pages"] == rasterize.poppler_page_count(paths[doc["document"]])
    assert res["pages"] == sum(d["pages"] for d in res["documents"]) <= 4
    for name, renderer in res["renderers"].items():
        assert "error" not in renderer, name
        assert renderer["pages"] == res["pages"]
        assert renderer["pages_per_cpu_second"] > 0
    assert res["renderers"]["pdf2image_200dpi"]["speedup_vs_pdf2image"] == 1.0
    # Our renders fill the ColQwen2.5 budget; pdf2image renders letter pages at 200 DPI (far more pixels).
    assert res["renderers"]["stage_default"]["mean_pixels_per_page"] <= 602_112
    assert res["renderers"]["pdf2image_200dpi"]["mean_pixels_per_page"] > 602_112
    assert {c["id"] for c in results["rasterize"]["checks"]} == {"rasterize_speed", "rasterize_cosine"}


def test_rasterize_embedding_effect_pairs_the_same_page(results):
    budgets = results["rasterize"]["results"]["embedding"]["budgets"]
    tiny = budgets[0]
    assert tiny["processor_max_pixels"] == 200_704 and len(tiny["pages"]) == 2
    for page in tiny["pages"]:
        assert page["same_grid"] and page["vectors_ours"] == page["vectors_dpi200"]
        # The same page rendered two ways is far closer than two different pages.
        assert 0.9 < page["pooled_cosine"] <= 1.0 + 1e-6
        assert page["pooled_cosine"] > page["pooled_cosine_other_page"]
    assert len(budgets) == 1


def test_symmetric_maxsim_cosine():
    rng = np.random.default_rng(0)
    a = common.unit_rows(rng.standard_normal((20, 128)))
    assert rasterize.symmetric_maxsim_cosine(a, a[::-1]) == pytest.approx(1.0)
    assert rasterize.symmetric_maxsim_cosine(a, -a) < 0.5


def test_index_size_bytes_are_vectors_times_cell_size(results):
    rows = results["index_size"]["results"]["models"]
    for row in rows:
        n, sizes = row["vectors"], row["bytes_per_page"]
        assert sizes["float16"] == n * 256
        assert sizes["binary"] == n * 16
        for factor in (2, 3, 4):
            assert sizes[f"binary_pool{factor}"] == (n // factor) * 16
    for measured in results["index_size"]["results"]["parquet"]:
        # Sign bits of clustered vectors barely compress; float16 vectors compress a little.
        assert 0.5 < measured["binary_bytes_per_page"] / measured["binary_raw_bytes_per_page"] < 1.1
        assert 0.5 < measured["embedding_bytes_per_page"] / measured["embedding_raw_bytes_per_page"] < 1.1


def test_index_size_qwen_counts_match_the_processor(results, tiny_model_dir):
    from colpali_engine.models import ColQwen2Processor

    processor = ColQwen2Processor.from_pretrained(str(tiny_model_dir))
    rows = results["index_size"]["results"]["models"]
    sizes = {"US Letter portrait": (612, 792), "A4 portrait": (595.276, 841.89)}
    for row in rows:
        if row["model"] not in ("tiny", "colqwen2.5-v0.2"):
            continue
        budget = 200_704 if row["model"] == "tiny" else 602_112
        image = Image.new("RGB", target_size(*sizes[row["page"]], budget, 200.0), "white")
        with rasterize.processor_budget(processor, budget):
            vectors = int(processor.process_images([image])["attention_mask"].sum())
        assert vectors == row["vectors"], row


def test_fidelity_pool1_float_is_exact_and_full_float_rerank_is_exact():
    generator = vectors.ClusteredVectors(3)
    pages = generator.pages(15, (30, 50))
    queries = [generator.query(t) for t in (0, 7, 11)]
    out = fidelity.fidelity_of(
        pages, queries, pool_factors=(1, 3), rerank_counts=(5,), target_hits=(2, 100), targets=[0, 7, 11]
    )
    rows = {(r["pool_factor"], r["profile"], r.get("target_hits"), r.get("rerank_count")): r for r in out["rows"]}
    assert rows[(1, "float", None, None)]["recall"] == 1.0 and rows[(1, "float", None, None)]["ndcg"] == 1.0
    # two_phase re-ranks with exact MaxSim over the unpooled vectors: every page re-ranked is exact again,
    # whatever the candidates' pool factor; every page retrieved by 100 hits per token too.
    for factor in (1, 3):
        assert rows[(factor, "two_phase", None, 15)]["recall"] == 1.0
        assert rows[(factor, "two_phase", 100, 15)]["recall"] == 1.0
        assert rows[(factor, "two_phase", 100, 15)]["retrieved_pages_mean"] == 15
        assert rows[(factor, "two_phase", 2, 5)]["retrieved_pages_mean"] <= 15
    # two_phase_unpacked (the former default) is the unpacked-bits second phase on the first phase's top 100.
    stored = [np.asarray(p, dtype="<f2").astype(np.float32) for p in pages]
    index = LocalIndex(common.pages_table(stored))
    exact = [common.top_indexes(index.float_maxsim(q), 10) for q in queries]
    unpacked = [common.top_indexes(index.unpacked_maxsim(q, np.arange(15)), 10) for q in queries]
    expected = fidelity._ranking_metrics(exact, unpacked, 10)
    assert rows[(1, "two_phase_unpacked", None, 100)]["recall"] == pytest.approx(expected["recall"])
    assert rows[(1, "two_phase_unpacked", None, 100)]["ndcg"] == pytest.approx(expected["ndcg"])
    assert rows[(3, "float", None, None)]["vectors_per_page"] < rows[(1, "float", None, None)]["vectors_per_page"]
    # Pool-3 candidates: binary in memory at a third of the vectors, unpooled float16 re-ranking vectors on disk.
    costs = rows[(3, "two_phase", None, 15)]["bytes_per_page"]
    assert costs["disk_float"] == pytest.approx(rows[(3, "two_phase", None, 15)]["rerank_vectors_per_page"] * 256)
    assert costs["memory_binary"] == pytest.approx(rows[(3, "two_phase", None, 15)]["vectors_per_page"] * 16)
    depth = {(d["pool_factor"], d["target_hits"]): d for d in out["depth_needed"]}
    assert depth[(1, None)]["covered_share"] == 1.0 and 10 <= depth[(1, None)]["depth_p99"] <= 15


def test_fidelity_grid_equals_local_search(results):
    rows = results["fidelity"]["results"]["sets"]["synthetic"]["rows"]
    # The default setting (its rerank depth capped at the 12 pages) ranked by LocalIndex.search itself.
    (default,) = [r for r in rows if "search_matches_grid" in r and r["profile"] == "two_phase"]
    assert fidelity._is_setting(default, {**fidelity.DEFAULT_SETTING, "rerank_count": 12})
    assert default["search_matches_grid"] == 1.0
    # The single-vector first stages (page_vector, muvera) too: their grid rows equal LocalIndex.search.
    single = [r for r in rows if "search_matches_grid" in r and r["profile"] != "two_phase"]
    assert {r["profile"] for r in single} >= {"page_vector", "muvera"}
    assert all(r["search_matches_grid"] == 1.0 for r in single), single


def test_ranking_metrics_by_hand():
    exact = [np.array([1, 2, 3])]
    assert fidelity._ranking_metrics(exact, [np.array([1, 2, 3])], 3) == {
        "recall": 1.0,
        "recall_min": 1.0,
        "ndcg": 1.0,
    }
    assert fidelity._ranking_metrics(exact, [np.array([7, 8, 9])], 3)["recall"] == 0.0
    # Grades 3, 2, 1; the run finds rank 1 first and rank 3 second: DCG = 3 + 1/log2(3), IDCG = 3 + 2/log2(3) + 1/2.
    got = fidelity._ranking_metrics(exact, [np.array([1, 3, 9])], 3)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["ndcg"] == pytest.approx((3 + 1 / np.log2(3)) / (3 + 2 / np.log2(3) + 0.5))


def test_fidelity_benchmark_reports_every_setting(results):
    synthetic = results["fidelity"]["results"]["sets"]["synthetic"]
    profiles = {(r["pool_factor"], r["profile"]) for r in synthetic["rows"]}
    for factor in (1, 2, 3):
        assert {
            (factor, "float"),
            (factor, "binary"),
            (factor, "two_phase"),
            (factor, "two_phase_unpacked"),
        } <= profiles
    assert all(0.0 <= r["recall"] <= 1.0 and 0.0 <= r["ndcg"] <= 1.0 for r in synthetic["rows"])


def test_search_float_profile_top10_equals_score_multi_vector(results):
    run = results["search"]["results"]["runs"][0]
    assert run["pages"] == 300
    assert run["float_top10_equal_smv"] == run["queries"]
    assert run["float_max_abs_score_diff_vs_smv"] < 1e-3
    for method in ("two_phase", "float", "smv_batched", "smv_per_query"):
        assert run["methods"][method]["queries_per_second"] > 0
    assert run["methods"]["smv_batched"]["speedup_vs_smv_batched"] == 1.0
    checks = {c["id"]: c for c in results["search"]["checks"]}
    assert checks["search_float_equals_smv_300"]["met"]
    assert checks["search_speed_10k_batched"]["value"] is None and not checks["search_speed_10k_batched"]["met"]


def test_feed_hex_form_is_smaller(results):
    (row,) = [r for r in results["feed"]["results"]["rows"] if r["fields"] == "binary + bfloat16"]
    assert row["hex"]["bytes_per_page"] < row["list"]["bytes_per_page"]


def test_pooling_stage_gives_the_direct_poolers_vectors(results):
    (row,) = results["pooling"]["results"]["rows"]
    assert row["same_output"]
    assert row["pooled_vectors_per_page"] == 48 // 3
    assert row["stage_cpu_ms_per_page"] > 0 and row["direct_cpu_ms_per_page"] > 0
    for gpu in results["pooling"]["results"]["cores_per_gpu"]:
        assert gpu["cores_per_gpu"] == pytest.approx(gpu["pages_per_second"] * row["stage_cpu_ms_per_page"] / 1000)


def fake_pipeline_result(source, model, cpus):
    runs = [
        {"backend": backend, "num_cpus": n, "wall_seconds": 10.0 / (n * speed), "pages_per_second": 1.9 * n * speed}
        for n in cpus
        for backend, speed in (("local", 1.0), ("ray", 0.5))
    ]
    for r in runs:
        r["stage_seconds"] = {"rasterize": 1.0, "embed": 3.0, "pool": 0.5, "binarize": 0.1, "write": 0.2}
    return {"source": source, "model": model, "pages": 19, "baseline": "local", "runs": runs}


def test_pipeline_records_missing_and_renders_ratios(monkeypatch, tmp_path):
    monkeypatch.delattr(pipeline, "run_benchmark", raising=False)
    missing = pipeline.bench_pipeline(source=tmp_path)
    assert missing["results"]["status"] == "missing"
    monkeypatch.setattr(pipeline, "run_benchmark", fake_pipeline_result, raising=False)
    done = pipeline.bench_pipeline(source=tmp_path, cpus=(1, 2))
    assert done["results"]["status"] == "ok"
    ratios = {(r["backend"], r["num_cpus"]): r["ratio"] for r in report.pipeline_ratios(done["results"]["data"])}
    assert ratios == {("local", 1): 1.0, ("ray", 1): 0.5, ("local", 2): 2.0, ("ray", 2): 1.0}


def test_hybrid_passes_the_text_layer_through_on_the_sample_queries(results):
    res = results["hybrid"]["results"]
    metrics = res["metrics"]
    # BM25 over title + text finds the answering page of every query whose page has a text layer, and only those.
    with_text = 1 - res["queries_answered_by_a_page_without_text"] / res["queries"]
    assert metrics["BM25 alone (title + text)"]["Recall@10"] == pytest.approx(with_text)
    # The tiny TEST model's vectors are random: fusing BM25 in (Vespa's weights) can only add what it finds.
    assert metrics["hybrid (linear, Vespa's weights)"]["Recall@10"] >= metrics["two_phase"]["Recall@10"]
    assert metrics["hybrid (linear, Vespa's weights)"]["Recall@10"] >= with_text


def test_report_renders_every_section_with_small_figures(results, tmp_path):
    all_results = dict(results)
    data = fake_pipeline_result("s", "tiny", [1, 2])
    operator = {"stages": ["rasterize", "preprocess"], "kind": "tasks", "workers": None, "tasks": 3, "busy_s": 1.0}
    data["runs"][-1]["operators"] = [{**operator, "busy": 0.5, "backpressured": 0.25}]
    data["startup"] = {
        "num_cpus": 2,
        "runs": [{"code": "now", "backend": "local", "wall_seconds": 5.0, "cpu_seconds": 4.0}],
        "ratios": {"old": {"local": {"wall": 1.2, "cpu": 1.1}}},
    }
    split = {"preprocess_s_per_page": 0.01, "collate_s_per_page": 0.001, "forward_s_per_page": 0.02}
    data["embed_split"] = {
        "pages": 4,
        "model": "tiny",
        "before": {**split, "actor_cpu_s_per_page": 0.03, "preprocess_stage_s_per_page": 0.0},
        "now": {
            **split,
            "preprocess_s_per_page": 0.0,
            "actor_cpu_s_per_page": 0.02,
            "preprocess_stage_s_per_page": 0.01,
        },
        "actor_ratio": 1.5,
    }
    all_results["pipeline"] = {"params": {}, "results": {"status": "ok", "error": None, "data": data}, "checks": []}
    all_results["scale"] = scale.bench_scale(
        sizes=(300, 1200), docs_per_part=100, workdir=str(tmp_path), history_parts=3
    )
    for name, body in all_results.items():
        body = {"benchmark": name, "machine": common.machine_info(), "command": f"test {name}", **body}
        cli.write_result(tmp_path, name, body)
        json.loads((tmp_path / "results" / f"{name}.json").read_text())
    markdown = report.render(tmp_path).read_text()
    for title in report.TITLES.values():
        assert f"## {title}" in markdown
    assert "Not run" not in markdown and "The benchmark failed" not in markdown
    assert "| RAM |" in markdown and "| colpali-engine | 0.3.18 |" in markdown
    assert "| rasterize → preprocess | tasks |" in markdown and "**1.50×** less CPU work" in markdown
    figures = list((tmp_path / "figures").glob("*.png"))
    assert len(figures) >= 8
    assert all(f.stat().st_size < 200_000 for f in figures)
    for link in [line for line in markdown.splitlines() if line.startswith("![")]:
        assert (tmp_path / link.split("(")[1].rstrip(")")).is_file()


def test_parse_sizes():
    assert cli.parse_sizes("search", ["1000", "10000"])["search"] == [1000, 10000]
    sizes = cli.parse_sizes("all", ["search=1000,10000", "fidelity=50"])
    assert sizes["search"] == [1000, 10000] and sizes["fidelity"] == [50] and sizes["feed"] == [50]
    with pytest.raises(ValueError, match="name=N"):
        cli.parse_sizes("all", ["100"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        cli.parse_sizes("all", ["nope=1"])


def test_cli_runs_a_benchmark_and_renders_the_report(tmp_path):
    """``python -m benchmarks NAME`` writes result and report; ``python -m benchmarks report`` re-renders it."""
    result = run_cli("benchmarks", "feed", "--size", "2", "--repeats", "1", "--out", str(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "results" / "feed.json").read_text())
    assert written["command"] == f"python -m benchmarks feed --size 2 --repeats 1 --out {tmp_path}"
    assert written["params"]["pages"] == 2 and written["machine"]["packages"]["numpy"]
    (tmp_path / "benchmarks.md").unlink()
    again = run_cli("benchmarks", "report", "--out", str(tmp_path), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert "python -m benchmarks feed --size 2" in markdown
    assert "_Not run. `python -m benchmarks search` writes `results/search.json`._" in markdown


def test_depth_growth_reranking_every_page_is_exact_and_depth_is_consistent():
    every = 60
    settings = (
        {"profile": "two_phase", "retrieval": "all", "target_hits": None, "rerank_count": every},
        {"profile": "muvera", "retrieval": "nearest_neighbor", "target_hits": every, "rerank_count": every},
        {"profile": "two_phase", "retrieval": "nearest_neighbor", "target_hits": 2, "rerank_count": 30},
        {"profile": "two_phase", "retrieval": "all", "target_hits": None, "rerank_count": every + 1},  # too deep
    )
    out = fidelity.depth_growth(
        sizes=(40, every),
        n_queries=4,
        vectors_per_page=(30, 40),
        target_hits=(2,),
        timing_queries=1,
        settings=settings,
    )
    assert [g["pages"] for g in out] == [40, every]
    small, large = out
    assert len(small["settings"]) == 1 and len(large["settings"]) == 3  # settings deeper than the corpus are skipped
    measured = {(s["profile"], s["retrieval"], s["rerank_count"]): s for s in large["settings"]}
    # Re-ranking every page by exact MaxSim over the unpooled vectors is the reference itself, whatever the first
    # stage: per-token hamming over pool-3 bits or the one MUVERA vector.
    assert measured[("two_phase", "all", every)]["recall"] == 1.0
    assert measured[("muvera", "nearest_neighbor", every)]["recall"] == 1.0
    for g in out:
        depth = g["depth_needed"]
        # Every page retrieved: the exact top-10 is always covered, within the corpus.
        for name in ("all", "muvera", "page_vector"):
            assert depth[name]["covered_share"] == 1.0 and 10 <= depth[name]["p50"] <= depth[name]["p99"] <= g["pages"]
        assert depth["nearest_neighbor 2"]["retrieved_pages_mean"] <= g["pages"]
        assert g["bytes_per_page"]["muvera_memory"] > g["bytes_per_page"]["page_vector_memory"]
