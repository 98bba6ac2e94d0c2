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


def test_query_files_take_beir_lines_next_to_plain_and_query_lines(built_index, tmp_path, capsys):
    from jobs.search import run

    path = tmp_path / "queries.jsonl"
    lines = ['{"_id": "q1", "text": "sourdough starter"}', "", "tide tables", '{"query": "coral reef survey"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = search_config(f"index={built_index}", f"queries_file={path}", "top_k=1", "format=jsonl")
    assert run(cfg) == 0, capsys.readouterr().err
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["query"] for h in hits] == ["sourdough starter", "tide tables", "coral reef survey"]


@pytest.mark.parametrize(
    ("content", "line", "says"),
    [
        (b'tide tables\n{"query": "sourdough starter"\n', 2, "invalid JSON"),
        (b'tide tables\n\n{"_id": "q3", "title": "no text"}\n', 3, "needs a non-empty string 'query'"),
        (b'{"query": ""}\n', 1, "needs a non-empty string 'query'"),
        (b"tide tables\nsourdough \xff starter\n", 2, "not UTF-8"),
    ],
    ids=["bad-json", "no-text-key", "empty-text", "not-utf8"],
)
def test_bad_query_file_lines_exit_2_naming_the_line(built_index, tmp_path, capsys, content, line, says):
    from jobs.search import run

    path = tmp_path / "queries.jsonl"
    path.write_bytes(content)
    assert run(search_config(f"index={built_index}", f"queries_file={path}")) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}:" in err and says in err, err


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("top_k=-1", "top_k"),  # used to return every page but one
        ("top_k=0", "top_k"),
        ("top_k=401", "top_k"),
        ("top_k=many", "top_k"),
        ("rerank_count=0", "rerank_count"),
        ("limit_queries=-1", "limit_queries"),  # used to drop the last query
        ("limit_queries=0", "limit_queries"),  # used to mean "all"
    ],
)
def test_out_of_range_settings_exit_2_naming_the_key(built_index, sample_corpus, capsys, override, key):
    from jobs.search import run

    cfg = search_config(f"index={built_index}", f"queries_file={sample_corpus / 'queries.jsonl'}", override)
    assert run(cfg) == 2
    assert f"{key} must be an integer" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["tiny-colqwen3", "tiny-colqwen2.5"], ids=["other-width", "same-width"])
def test_a_model_other_than_the_index_s_is_refused(built_index, capsys, model):
    from jobs.search import run

    for backend in ([], ["vespa.endpoint.url=http://127.0.0.1:9"]):
        assert run(search_config(f"index={built_index}", "query=tide tables", f"model.name={model}", *backend)) == 2
        err = capsys.readouterr().err
        assert f"model.name={model!r} conflicts with the index" in err and "'tiny'" in err, err
        assert "ledger/index.json" in err


def test_the_index_s_own_model_name_is_accepted(built_index, capsys):
    from jobs.search import run

    assert run(search_config(f"index={built_index}", "query=tide tables", "model.name=tiny", "top_k=1")) == 0
    assert "tide tables" in capsys.readouterr().out


def test_a_vespa_that_does_not_answer_is_a_search_failure_not_a_traceback(built_index, capsys):
    import socket

    from jobs.search import run

    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        assert run(search_config(f"index={built_index}", "query=tide tables", f"vespa.endpoint.url={url}")) == 1
    assert f"no answer from Vespa at vespa.endpoint.url={url!r}" in capsys.readouterr().err
