"""The evaluation job (python -m jobs.evaluate) as users run it, and its exit status for bad input (in-process);
the runner itself is tested in tests/benchmarks/test_evaluation_runner.py, datasets and metrics in
tests/test_evaluation.py."""

from __future__ import annotations

import pytest

from tests.helpers import compose_config, run_cli


def test_unreachable_hugging_face_dataset_fails_with_what_to_do(tmp_path):
    result = run_cli("jobs.evaluate", "dataset=vidore/docvqa_test_subsampled_beir", "model=tiny", timeout=120)
    assert result.returncode == 2
    assert "hf://datasets/vidore/docvqa_test_subsampled_beir" in result.stderr
    assert "copy the dataset's corpus/, queries/ and qrels/ parquet files" in result.stderr


def beir_dataset(root, queries: bytes):
    (root / "corpus").mkdir(parents=True)
    (root / "corpus" / "report.pdf").write_bytes(b"%PDF-1.4 not parsed: the job stops before indexing")
    (root / "queries.jsonl").write_bytes(queries)
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\treport#1\t1\n")
    return root


def test_a_query_file_that_is_not_utf8_exits_2_naming_the_line(tmp_path, capsys):
    from jobs.evaluate import run

    dataset = beir_dataset(tmp_path / "data", b'{"_id": "q1", "text": "revenue"}\n{"_id": "q2", "text": "caf\xe9"}\n')
    cfg = compose_config("evaluate", [f"dataset={dataset}", "model=tiny", f"output_dir={tmp_path / 'out'}"])
    assert run(cfg) == 2
    assert f"{dataset / 'queries.jsonl'}:2: not UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "key"),
    [("top_k=401", "top_k"), ("limit_queries=-1", "limit_queries"), ("rerank_count=0", "rerank_count")],
)
def test_out_of_range_settings_exit_2_naming_the_key(tmp_path, capsys, override, key):
    from jobs.evaluate import run

    dataset = beir_dataset(tmp_path / "data", b'{"_id": "q1", "text": "revenue"}\n')
    cfg = compose_config("evaluate", [f"dataset={dataset}", "model=tiny", f"output_dir={tmp_path / 'out'}", override])
    assert run(cfg) == 2
    assert f"{key} must be an integer" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "refused before any work"
