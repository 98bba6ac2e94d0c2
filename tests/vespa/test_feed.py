"""Replaying an index into Vespa: exactly once, through faults, resumable after 507, in step with the index."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from pipelines import schema
from pipelines.index import IndexLocation
from pipelines.index.writer import PartWriter
from pipelines.redaction import redact
from pipelines.vespa import replay
from pipelines.vespa.client import VespaEndpoint
from pipelines.vespa.documents import DocumentSettings
from pipelines.vespa.feed import FeedSettings
from tests.helpers import compose_config, run_python
from tests.vespa.conftest import doc_rows, vespa_id, write_index
from tests.vespa.fake_vespa import Drop, Hang, Reset, Status

FAST = FeedSettings(max_in_flight=8, request_timeout_s=1.0, backoff_initial_s=0.01, backoff_max_s=0.05)
CORPUS = {f"/data/doc{i:02d}.pdf": (3, 0) for i in range(12)}


def feed(location, server, **kwargs):
    endpoint = VespaEndpoint(url=server.url)
    return replay.replay(IndexLocation(str(location)), endpoint, DocumentSettings(), FAST, **kwargs)


def posts(server):
    return [r for r in server.requests if r.method == "POST" and r.path.startswith("/document/v1/")]


def test_every_page_arrives_exactly_once_through_429_503_timeouts_and_stream_resets(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)

    def faults(request):
        if request.method != "POST":
            return None
        if request.index == 6:
            return Reset()
        if request.index == 9:
            return Hang(3.0)  # longer than the 1 s client timeout
        if request.index % 5 == 1:
            return Status(429, "Rejecting execution due to overload")
        if request.index % 7 == 2:
            return Status(503, "Service unavailable")
        return None

    fake.fault = faults
    report = feed(tmp_path, fake)

    assert report["complete"] and report["puts_acked"] == len(page_ids) == 36
    assert report["retried_operations"] > 0
    assert set(fake.documents) == {vespa_id(p) for p in page_ids}
    assert all(fake.put_counts[vespa_id(p)] == 1 for p in page_ids), "a rejected request must not be applied"
    statuses = {r.status for r in posts(fake)}
    assert {429, 503, None, 200} <= statuses and 400 not in statuses, "every document was valid for the schema"
    stored = fake.documents[vespa_id(page_ids[0])]
    assert stored["page_id"] == page_ids[0] and len(stored["embedding"]["0"]) == 32
    assert set(replay.FeedLog(IndexLocation(str(tmp_path)), VespaEndpoint(url=fake.url)).fed_pages()) == set(page_ids)


def test_dropped_connections_lose_no_page(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)
    fake.fault = lambda r: Drop() if r.method == "POST" and r.index in (2, 11, 12, 25) else None
    report = feed(tmp_path, fake)
    assert report["complete"] and report["puts_acked"] == 36
    assert set(fake.documents) == {vespa_id(p) for p in page_ids}
    # A drop can also lose the answers of requests that were applied on that connection; those are sent
    # again, which is harmless: a put of the same id and fields overwrites.
    expected = {
        d["id"]: d["fields"]
        for d in replay.documents.iter_documents(IndexLocation(str(tmp_path)).read_pages(), DocumentSettings())
    }
    assert all(fake.documents[vespa_id(pid)] == fields for pid, fields in expected.items())
    assert fake.connection_count > 1


def test_rerun_sends_nothing_new_and_full_mode_resends_everything(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)
    assert feed(tmp_path, fake)["puts_acked"] == 36
    again = feed(tmp_path, fake)
    assert again["pages_already_fed"] == 36 and again["puts_planned"] == 0 and again["complete"]
    full = feed(tmp_path, fake, mode="full")
    assert full["puts_acked"] == 36
    assert all(fake.put_counts[vespa_id(p)] == 2 for p in page_ids)


def test_new_config_hash_refeeds_the_same_page_ids(tmp_path, fake):
    write_index(tmp_path, CORPUS)
    feed(tmp_path, fake)
    write_index(tmp_path, CORPUS, config_hash="cfg2")
    report = feed(tmp_path, fake)
    assert report["puts_acked"] == 36 and report["pages_already_fed"] == 0


def test_507_stops_the_feed_with_a_clear_message_and_a_rerun_finishes(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)
    accepted = []
    lock = threading.Lock()

    def block_after_ten(request):
        if request.method != "POST":
            return None
        with lock:
            if len(accepted) >= 10:
                return Status(507, "NO_SPACE: External feed is blocked due to resource exhaustion: memory")
            accepted.append(request.index)
        return None

    fake.fault = block_after_ten
    args = ["-m", "jobs.feed", f"index={tmp_path}", f"vespa.endpoint.url={fake.url}", "vespa.feed.max_in_flight=4"]
    first = run_python(args)
    assert first.returncode == 3, first.stderr[-2000:]
    assert "HTTP 507" in first.stderr and "resource exhaustion" in first.stderr and "rerun" in first.stderr
    assert len(fake.documents) == 10
    report = json.loads(next((tmp_path / "vespa").glob("*/feed_report.json")).read_text())
    assert report["blocked"] and report["puts_acked"] == 10 and report["puts_remaining"] == 26
    # Once blocked, the feeder stops sending: at most the in-flight requests see the 507.
    assert sum(1 for r in posts(fake) if r.status == 507) <= 4

    fake.fault = None
    second = run_python(args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "10 already fed" in second.stdout
    assert set(fake.documents) == {vespa_id(p) for p in page_ids}
    assert all(fake.put_counts[vespa_id(p)] == 1 for p in page_ids)


def test_rejected_document_is_recorded_and_retried_next_run(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)
    bad = vespa_id(page_ids[5])
    fake.fault = lambda r: Status(400, "Error in document: bad tensor") if r.doc_id == bad else None
    report = feed(tmp_path, fake)
    assert report["puts_acked"] == 35 and report["puts_failed"] == 1 and not report["complete"]
    [failure] = report["failures"]
    assert failure["page_id"] == page_ids[5] and failure["status"] == 400 and "bad tensor" in failure["message"]
    assert sum(1 for r in posts(fake) if r.doc_id == bad) == 1, "a 400 is not retried"
    fake.fault = None
    again = feed(tmp_path, fake)
    assert again["puts_planned"] == 1 and again["complete"] and bad in fake.documents


def test_changed_document_replaces_its_stale_pages_and_deleted_ones_need_delete_missing(tmp_path, fake):
    old_ids = write_index(tmp_path, {"/data/a.pdf": (3, 0), "/data/b.pdf": (2, 0), "/data/c.pdf": (1, 0)})
    feed(tmp_path, fake)
    # a.pdf changed (new content, 2 pages), c.pdf deleted from the source, d.pdf added.
    new_ids = write_index(tmp_path, {"/data/a.pdf": (2, 1), "/data/b.pdf": (2, 0), "/data/d.pdf": (1, 0)})
    report = feed(tmp_path, fake)
    stale_a = [p for p in old_ids[:3]]
    assert report["removes_acked"] == 3 and report["puts_acked"] == 3  # a's 2 new pages + d's page
    assert all(fake.delete_counts[vespa_id(p)] == 1 for p in stale_a)
    c_page = old_ids[-1]
    assert set(fake.documents) == {vespa_id(p) for p in new_ids} | {vespa_id(c_page)}, "c stays without the flag"
    assert all(fake.put_counts[vespa_id(p)] == 1 for p in new_ids), "unchanged b is not re-fed"

    synced = feed(tmp_path, fake, delete_missing=True)
    assert synced["removes_acked"] == 1 and set(fake.documents) == {vespa_id(p) for p in new_ids}


def test_delete_by_document_uses_a_selection_delete_across_continuations(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)
    feed(tmp_path, fake)
    fake.visit_chunk = 1  # one removal per request: the job must follow continuations
    doc_id = page_ids[0].rsplit("-p", 1)[0]
    result = run_python(
        ["-m", "jobs.feed", f"index={tmp_path}", f"vespa.endpoint.url={fake.url}", f"delete.doc_id={doc_id}"]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "removed 3 pages" in result.stdout
    assert not any(d.startswith(vespa_id(doc_id)) for d in fake.documents) and len(fake.documents) == 33
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert len(deletes) >= 3 and all(r.params["cluster"] == "pages" for r in deletes)
    # The feed log knows: a resume leaves the document deleted; only mode=full puts it back.
    assert feed(tmp_path, fake)["puts_planned"] == 0 and len(fake.documents) == 33
    assert feed(tmp_path, fake, mode="full")["puts_acked"] == 36 and len(fake.documents) == 36


def test_moved_file_is_re_put_under_its_new_source_uri(tmp_path, fake):
    page_ids = write_index(tmp_path, {"/data/old/a.pdf": (2, 0)})
    feed(tmp_path, fake)
    location = IndexLocation(str(tmp_path))
    location.clear_tables()
    rows = [{**r, "source_uri": "/data/new/a.pdf"} for r in doc_rows("/data/old/a.pdf", 2, 0)]
    PartWriter(location, "tiny", "cfg1").write(schema.rows_to_table(rows))
    report = feed(tmp_path, fake)
    assert report["puts_acked"] == 2 and report["removes_planned"] == 0
    assert {fake.documents[vespa_id(p)]["source_uri"] for p in page_ids} == {"/data/new/a.pdf"}


def test_token_is_sent_but_never_logged_or_stored(tmp_path, fake):
    token = "vespa-token-Zq8-very-secret"
    write_index(tmp_path, {"/data/a.pdf": (2, 0)})
    fake.required_token = token
    args = ["-m", "jobs.feed", f"index={tmp_path}", f"vespa.endpoint.url={fake.url}", "log_level=DEBUG"]
    denied = run_python(args, env={"VESPA_CLOUD_SECRET_TOKEN": "wrong-token-value"})
    assert denied.returncode == 2 and "refused the credentials (HTTP 401, auth=token)" in denied.stderr
    assert not posts(fake), "a refused token fails before any document is sent"
    ok = run_python(args, env={"VESPA_CLOUD_SECRET_TOKEN": token})
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len(fake.documents) == 2 and "auth=token" in ok.stdout
    literal = run_python([*args, f"vespa.endpoint.token={token}", "mode=full"])
    assert literal.returncode == 0
    for result in (denied, ok, literal):
        assert token not in result.stdout + result.stderr
        assert "wrong-token-value" not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_redact_hides_secret_values_but_keeps_their_env_names():
    cfg = {
        "vespa": {
            "endpoint": {"token": "abc", "token_env": "VESPA_CLOUD_SECRET_TOKEN", "url": "http://x"},
            "app": {"max_query_tokens": 64},
        }
    }
    out = redact(cfg)
    assert out["vespa"]["endpoint"] == {"token": "***", "token_env": "VESPA_CLOUD_SECRET_TOKEN", "url": "http://x"}
    assert out["vespa"]["app"]["max_query_tokens"] == 64
    storage = redact({"aws_secret_access_key": "s", "account_key": "k", "key_env": "K", "anon": False})
    assert storage == {"aws_secret_access_key": "***", "account_key": "***", "key_env": "K", "anon": False}
    assert "abc" not in repr(VespaEndpoint(url="http://x:8080", token="abc").resolved())


def test_bad_endpoint_config_fails_fast(tmp_path):
    write_index(tmp_path, {"/data/a.pdf": (1, 0)})
    missing = run_python(["-m", "jobs.feed", f"index={tmp_path}"])
    assert missing.returncode == 2 and "vespa.endpoint.url" in missing.stderr
    with_credentials = run_python(["-m", "jobs.feed", f"index={tmp_path}", "vespa.endpoint.url=http://u:p@host:8080"])
    assert with_credentials.returncode == 2 and "must not carry credentials" in with_credentials.stderr
    assert "u:p" not in with_credentials.stderr


def test_unreachable_vespa_fails_before_any_work_with_the_setting_named(tmp_path, capsys):
    from jobs.feed import run

    write_index(tmp_path, {"/data/a.pdf": (2, 0)})
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        for command in ([], [f"delete.doc_id={'0' * 32}"]):
            # max_retries=0 keeps the old behaviour (every page "failed", exit 1) quick to see
            overrides = [f"index={tmp_path}", f"vespa.endpoint.url={url}", "vespa.feed.max_retries=0", *command]
            assert run(compose_config("feed", overrides)) == 2
            err = capsys.readouterr().err
            assert f"no answer from Vespa at vespa.endpoint.url={url!r}" in err and "nothing was sent" in err, err
    assert not (tmp_path / "vespa").exists(), "nothing was planned or logged"


@pytest.mark.parametrize(
    ("override", "says"),
    [("mode=partial", "mode must be one of"), ("checkpoint_every=0", "checkpoint_every must be an integer >= 1")],
)
def test_bad_feed_settings_exit_2_naming_the_key(tmp_path, fake, capsys, override, says):
    from jobs.feed import run

    write_index(tmp_path, {"/data/a.pdf": (2, 0)})
    assert run(compose_config("feed", [f"index={tmp_path}", f"vespa.endpoint.url={fake.url}", override])) == 2
    assert says in capsys.readouterr().err
    assert not fake.requests, "settings are checked before Vespa is contacted"


@pytest.mark.parametrize("form", ["hex", "list"])
def test_both_tensor_forms_are_valid_for_the_schema(tmp_path, fake, form):
    page_ids = write_index(tmp_path, {"/data/a.pdf": (2, 0)})
    endpoint = VespaEndpoint(url=fake.url)
    report = replay.replay(IndexLocation(str(tmp_path)), endpoint, DocumentSettings(form=form), FAST)
    assert report["complete"] and set(fake.documents) == {vespa_id(p) for p in page_ids}
