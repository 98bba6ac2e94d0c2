"""The search CLI over an index built by the index CLI (both as users run them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def built_index(sample_corpus, tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("cli-index")
    result = run(
        [
            "-m",
            "jobs.index",
            f"source.location={sample_corpus}",
            f"output.location={out}",
            "model=tiny",
            "backend=local",
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 indexed" in result.stdout and "TEST MODEL" in result.stdout
    return out


def test_jsonl_output_lists_top_k_hits_per_query(built_index, sample_corpus):
    result = run(
        [
            "-m",
            "jobs.search",
            f"index={built_index}",
            f"queries_file={sample_corpus / 'queries.jsonl'}",
            "limit_queries=2",
            "top_k=3",
            "format=jsonl",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(hits) == 6
    assert [h["rank"] for h in hits] == [1, 2, 3, 1, 2, 3]
    for query_hits in (hits[:3], hits[3:]):
        scores = [h["score"] for h in query_hits]
        assert scores == sorted(scores, reverse=True)
    assert all(h["source_uri"].startswith("file://") and h["page_number"] >= 1 for h in hits)


def test_text_output_names_the_test_model(built_index):
    result = run(["-m", "jobs.search", f"index={built_index}", "query=sourdough starter", "top_k=2"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "query: sourdough starter" in result.stdout and "TEST MODEL" in result.stdout
    assert " 1. " in result.stdout and " 2. " in result.stdout


def test_search_without_an_index_says_how_to_fix_it(tmp_path):
    result = run(["-m", "jobs.search", f"index={tmp_path}", "query=x"], timeout=300)
    assert result.returncode == 2 and "run jobs.index first" in result.stderr
