"""Evaluation datasets and metrics (pipelines.evaluation): layouts, corpus ids, metrics against ir-measures."""

from __future__ import annotations

import io
import json
import math
import subprocess

import ir_measures
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import evaluation

MEASURES = [measure for _, measure in evaluation.MEASURES]


def test_metrics_match_hand_computed_values_and_ir_measures():
    qrels = {
        "q1": {"a#1": 1},
        "q2": {"b#1": 1},
        "q3": {"c#1": 1},  # never retrieved: must count as 0, not be dropped
        "q4": {"d#1": 2, "e#1": 1},
    }
    ranked = {
        "q1": ["a#1", "x#1", "y#1"],
        "q2": ["x#1", "y#1", "b#1"],
        "q3": [],
        "q4": ["e#1", "x#1", "d#1"],
    }
    means, per_query = evaluation.compute_metrics(qrels, ranked)

    assert per_query["q1"] == dict.fromkeys(evaluation.METRIC_NAMES, 1.0)
    assert per_query["q2"]["nDCG@5"] == pytest.approx(1 / math.log2(4))
    assert (per_query["q2"]["Recall@1"], per_query["q2"]["Recall@5"], per_query["q2"]["MRR"]) == (0.0, 1.0, 1 / 3)
    assert per_query["q3"] == dict.fromkeys(evaluation.METRIC_NAMES, 0.0)
    # graded judgments are linear gains (trec_eval's nDCG): e (gain 1) at rank 1, d (gain 2) at rank 3
    ideal = 2 + 1 / math.log2(3)
    assert per_query["q4"]["nDCG@5"] == pytest.approx((1 + 2 / math.log2(4)) / ideal)
    assert per_query["q4"]["Recall@1"] == 0.5 and per_query["q4"]["MRR"] == 1.0

    expected = {name: sum(values[name] for values in per_query.values()) / 4 for name in evaluation.METRIC_NAMES}
    assert means == pytest.approx(expected)
    # ir-measures on an explicitly scored run with the same order agrees on every measure
    run = {qid: {cid: 10.0 - rank for rank, cid in enumerate(ids)} for qid, ids in ranked.items() if ids}
    reference = ir_measures.calc_aggregate(MEASURES, qrels, run)
    assert means == pytest.approx({label: reference[measure] for label, measure in evaluation.MEASURES})


def test_a_perfect_run_scores_one_on_every_metric():
    qrels = {f"q{i}": {f"doc{i}#{i}": 1} for i in range(1, 8)}
    ranked = {qid: [next(iter(judged)), "other#1", "another#2"] for qid, judged in qrels.items()}
    means, _ = evaluation.compute_metrics(qrels, ranked)
    assert means == dict.fromkeys(evaluation.METRIC_NAMES, 1.0)


def test_ranks_not_raw_scores_decide_ties():
    # Two pages tied on the engine's score: the run keeps the engine's order, whatever the ids.
    means, _ = evaluation.compute_metrics({"q": {"a#1": 1}}, {"q": ["z#1", "a#1"]})
    assert means["MRR"] == 0.5 and means["Recall@1"] == 0.0


def test_sample_corpus_queries_become_queries_and_qrels(sample_corpus):
    lines = [json.loads(line) for line in (sample_corpus / "queries.jsonl").read_text().splitlines() if line.strip()]
    dataset = evaluation.load_dataset(str(sample_corpus), sample_corpus / "unused")
    assert dataset.layout == "sample" and dataset.corpus_dir == sample_corpus.resolve()
    assert len(dataset.queries) == len(dataset.qrels) == len(lines) == 29
    first = dataset.evaluated_queries[0]
    assert dataset.queries[first] == lines[0]["query"]
    stem = lines[0]["file_name"].removesuffix(".pdf")
    assert dataset.qrels[first] == {f"{stem}#{lines[0]['page_number']}": 1}


def test_beir_directory_layout_and_page_ids(tmp_path):
    (tmp_path / "corpus" / "2021").mkdir(parents=True)
    pdf = tmp_path / "corpus" / "2021" / "report.pdf"
    pdf.write_bytes(b"%PDF-1.4 not parsed here")
    (tmp_path / "queries.jsonl").write_text(
        '{"_id": "1", "text": "revenue"}\n{"_id": "2", "text": "unjudged"}\n{"_id": "3", "text": "judged 0"}\n'
    )
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n1\t2021/report#3\t1\n3\t2021/report#1\t0\n"
    )

    dataset = evaluation.load_dataset(str(tmp_path), tmp_path / "work")
    assert dataset.layout == "beir" and dataset.corpus_dir == (tmp_path / "corpus").resolve()
    assert dataset.evaluated_queries == ["1"] and dataset.skipped_queries == ["2", "3"]
    assert evaluation.page_corpus_id(dataset.corpus_dir, f"file://{pdf}", 3) == "2021/report#3"

    (tmp_path / "qrels" / "test.tsv").write_text("qid\tdoc\trel\n1\tx#1\t1\n")
    with pytest.raises(evaluation.DatasetError, match="header"):
        evaluation.load_dataset(str(tmp_path), tmp_path / "work")


def test_a_page_of_identical_files_counts_under_each_copy(tmp_path):
    # The index job indexes identical files once; the evaluation finds the page under both corpus ids.
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.4 same bytes")
    (tmp_path / "b.pdf").write_bytes(b"%PDF-1.4 same bytes")
    (tmp_path / "c.pdf").write_bytes(b"%PDF-1.4 other bytes")
    aliases = evaluation.corpus_aliases(tmp_path)
    assert sorted(aliases.values()) == [["a", "b"], ["c"]]
    [doc_id] = [d for d, stems in aliases.items() if stems == ["a", "b"]]
    assert evaluation.page_corpus_ids(tmp_path, aliases, doc_id, f"file://{tmp_path}/b.pdf", 2) == ["a#2", "b#2"]
    # a document the aliases do not know (changed since) is named by the file it was indexed from
    assert evaluation.page_corpus_ids(tmp_path, aliases, "0" * 32, f"file://{tmp_path}/c.pdf", 1) == ["c#1"]


def _png(width: int, height: int, shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, shade, 255 - shade)).save(buffer, "PNG")
    return buffer.getvalue()


def test_parquet_dataset_pages_become_one_page_pdfs(tmp_path):
    """A local copy of a ViDoRe BEIR dataset (the hub's parquet layout) converts to the local layout."""
    root = tmp_path / "hf-copy"
    for part in ("corpus", "queries", "qrels"):
        (root / part).mkdir(parents=True)
    images = [{"bytes": _png(400, 600, shade), "path": None} for shade in (10, 200)]
    pq.write_table(pa.table({"corpus-id": [7, 8], "image": images}), root / "corpus" / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"query-id": [1, 2], "query": ["first", "second"]}), root / "queries" / "test-0.parquet")
    qrels = pa.table({"query-id": [1, 2], "corpus-id": [8, 7], "score": [1, 1]})
    pq.write_table(qrels, root / "qrels" / "test-00000-of-00001.parquet")

    dataset = evaluation.load_dataset(str(root), tmp_path / "work", image_dpi=200)
    assert dataset.layout == "beir-parquet"
    assert dataset.queries == {"1": "first", "2": "second"}
    assert dataset.qrels == {"1": {"8#1": 1}, "2": {"7#1": 1}}
    pdfs = sorted(p.name for p in dataset.corpus_dir.iterdir())
    assert pdfs == ["7.pdf", "8.pdf"]
    info = subprocess.run(["pdfinfo", dataset.corpus_dir / "7.pdf"], capture_output=True, text=True, check=True)
    assert "Pages:           1" in info.stdout
    assert "144 x 216 pts" in info.stdout  # 400 x 600 px declared at 200 dpi
    first = (dataset.corpus_dir / "7.pdf").read_bytes()
    (tmp_path / "again").mkdir()
    evaluation.image_to_pdf(images[0]["bytes"], tmp_path / "again" / "7.pdf", dpi=200)
    assert (tmp_path / "again" / "7.pdf").read_bytes() == first  # deterministic: stable doc ids
