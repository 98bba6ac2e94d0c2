"""The search job over the session's sample index (built by the index job): the CLI as users run it
once, the rest in-process."""

import json

import pytest

from tests.helpers import compose_config, run_cli


@pytest.fixture(scope="module")
def built_index(sample_index):
    out, printed = sample_index
    assert "6 indexed" in printed and "TEST MODEL" in printed
    return out


def search_config(*overrides: str):
    return compose_config("search", overrides)


def test_jsonl_output_lists_top_k_hits_per_query(built_index, sample_corpus, capsys):
    from jobs.search import run

    cfg = search_config(
        f"index={built_index}",
        f"queries_file={sample_corpus / 'queries.jsonl'}",
        "limit_queries=2",
        "top_k=3",
        "format=jsonl",
    )
    assert run(cfg) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 6
    assert [h["rank"] for h in hits] == [1, 2, 3, 1, 2, 3]
    for query_hits in (hits[:3], hits[3:]):
        scores = [h["score"] for h in query_hits]
        assert scores == sorted(scores, reverse=True)
    assert all(h["source_uri"].startswith("file://") and h["page_number"] >= 1 for h in hits)


def test_run_search_raises_instead_of_exiting(tmp_path, built_index):
    from jobs.search import run_search
    from pipelines.errors import ConfigError

    with pytest.raises(FileNotFoundError, match=r"run jobs\.index first"):
        run_search(search_config(f"index={tmp_path}", "query=x"))
    with pytest.raises(ConfigError, match="nothing to search"):
        run_search(search_config(f"index={built_index}"))
    with pytest.raises(ConfigError, match="profile must be one of"):
        run_search(search_config(f"index={built_index}", "query=x", "profile=bm25"))


def test_text_output_names_the_test_model(built_index):
    result = run_cli("jobs.search", f"index={built_index}", "query=sourdough starter", "top_k=2", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "query: sourdough starter" in result.stdout and "TEST MODEL" in result.stdout
    assert " 1. " in result.stdout and " 2. " in result.stdout


def test_search_without_an_index_says_how_to_fix_it(tmp_path, capsys):
    from jobs.search import run

    assert run(search_config(f"index={tmp_path}", "query=x")) == 2
    assert "run jobs.index first" in capsys.readouterr().err
