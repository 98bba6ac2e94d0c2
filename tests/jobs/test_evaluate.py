"""The evaluation CLI (python -m jobs.evaluate) as users run it; the runner itself is tested in-process in
tests/benchmarks/test_evaluation_runner.py, datasets and metrics in tests/test_evaluation.py."""

from __future__ import annotations

from tests.helpers import run_cli


def test_unreachable_hugging_face_dataset_fails_with_what_to_do(tmp_path):
    result = run_cli("jobs.evaluate", "dataset=vidore/docvqa_test_subsampled_beir", "model=tiny", timeout=120)
    assert result.returncode == 2
    assert "hf://datasets/vidore/docvqa_test_subsampled_beir" in result.stderr
    assert "copy the dataset's corpus/, queries/ and qrels/ parquet files" in result.stderr
