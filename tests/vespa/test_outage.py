"""Vespa outages: ``vespa.feed.max_outage_s`` bounds how long a feed waits, the index still commits,
the pages not fed wait in the feed log for the next feed; the feed log stays bounded (compaction).

Vespa is the fake /document/v1 server answering 503 ("down") from some moment on; settings are small
(2 s outage deadline, 1 retry) so each case takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections import Counter

import pyarrow.parquet as pq

from jobs import feed as feed_job
from jobs import index as index_job
from pipelines.index import IndexLocation
from pipelines.index.writer import PartWriter
from pipelines.vespa import inline, replay
from pipelines.vespa.client import VespaEndpoint
from pipelines.vespa.documents import DocumentSettings
from pipelines.vespa.feed import FeedSettings, Operation, OutageClock, Outcome, run_operations
from tests.helpers import compose_config, index_config, run_python
from tests.vespa.conftest import vespa_id, write_index
from tests.vespa.fake_vespa import Status

MAX_OUTAGE_S = 2.0
#: What a feed may take beyond the deadline: requests in flight finish (1 s timeout), the job's own work.
SLACK_S = 4.0
SMALL = [
    f"vespa.feed.max_outage_s={MAX_OUTAGE_S}",
    "vespa.feed.max_retries=1",
    "vespa.feed.backoff_initial_s=0.05",
    "vespa.feed.backoff_max_s=0.2",
    "vespa.feed.request_timeout_s=1",
    "vespa.feed.max_in_flight=8",
]
CORPUS = {f"/data/doc{i:02d}.pdf": (3, 0) for i in range(12)}
FAST = FeedSettings(max_in_flight=8, request_timeout_s=1.0, backoff_initial_s=0.01, backoff_max_s=0.05)


class Outage:
    """A fault for FakeVespa: document/v1 requests get 503 once ``up_for`` puts were accepted, until ``end()``."""

    def __init__(self, up_for: int = 0):
        self.up_for, self.accepted, self.down = up_for, 0, True
        self.lock = threading.Lock()

    def __call__(self, request):
        if not request.path.startswith("/document/v1/"):
            return None
        with self.lock:
            if self.down and self.accepted >= self.up_for:
                return Status(503, "Service unavailable: no content nodes")
            self.accepted += request.method == "POST"
        return None

    def end(self):
        self.down = False


def run_feed(index, server, *overrides: str) -> tuple[int, float]:
    started = time.monotonic()
    code = feed_job.run(
        compose_config("feed", [f"index={index}", f"vespa.endpoint.url={server.url}", *SMALL, *overrides])
    )
    return code, time.monotonic() - started


def feed_report(index) -> dict:
    return json.loads(next((index / "vespa").glob("*/feed_report.json")).read_text())


def log_parts(index) -> list:
    return sorted((index / "vespa").glob("*/log/*.parquet"))


def test_feed_job_gives_up_on_an_outage_with_exit_6_and_the_rerun_feeds_exactly_the_rest(tmp_path, fake, capsys):
    page_ids = write_index(tmp_path, CORPUS)
    fake.fault = outage = Outage(up_for=10)
    code, seconds = run_feed(tmp_path, fake)
    assert code == feed_job.EXIT_UNAVAILABLE == 6
    assert seconds < MAX_OUTAGE_S + SLACK_S, seconds
    err = capsys.readouterr().err
    assert "Vespa unavailable for more than vespa.feed.max_outage_s (2 s); 26 pages waiting to be fed" in err
    report = feed_report(tmp_path)
    assert report["unavailable"] and report["outage_s"] >= MAX_OUTAGE_S
    assert report["puts_acked"] == 10 and report["puts_remaining"] == 26 and report["puts_failed"] == 0
    assert len(fake.documents) == 10

    outage.end()
    code, _ = run_feed(tmp_path, fake)
    assert code == 0, capsys.readouterr().err
    assert feed_report(tmp_path)["puts_planned"] == 26
    assert set(fake.documents) == {vespa_id(p) for p in page_ids}
    assert all(fake.put_counts[vespa_id(p)] == 1 for p in page_ids)


def test_a_flapping_vespa_down_for_less_than_max_outage_s_is_waited_out(tmp_path, fake, capsys):
    """Down 0.6 s of every second: each document outlives its retries (1) many times, yet the feed
    completes, because the outage deadline, not the per-document retry count, bounds a cluster outage."""
    page_ids = write_index(tmp_path, CORPUS)
    started = time.monotonic()

    def flapping(request):
        down = (time.monotonic() - started) % 1.0 < 0.6
        return Status(503, "Service unavailable") if down and request.path.startswith("/document/v1/") else None

    fake.fault = flapping
    code, _ = run_feed(tmp_path, fake)
    assert code == 0, capsys.readouterr().err
    assert set(fake.documents) == {vespa_id(p) for p in page_ids}
    assert all(fake.put_counts[vespa_id(p)] == 1 for p in page_ids)
    sent = Counter(r.doc_id for r in fake.requests if r.method == "POST")
    assert max(sent.values()) > 2, "some document was retried beyond max_retries through the outage"


def test_a_document_vespa_keeps_rejecting_still_fails_after_its_retries(tmp_path, fake):
    """The outage rule does not hide a document's own trouble: Vespa answers the others meanwhile."""
    page_ids = write_index(tmp_path, CORPUS)
    bad = vespa_id(page_ids[0])
    fake.fault = lambda r: Status(503, "overloaded") if r.doc_id == bad else None
    endpoint = VespaEndpoint(url=fake.url)
    settings = dataclasses.replace(FAST, max_retries=1, max_outage_s=10.0)
    report = replay.replay(IndexLocation(str(tmp_path)), endpoint, DocumentSettings(), settings)
    assert not report["unavailable"] and report["puts_failed"] == 1 and report["puts_acked"] == 35
    assert 2 <= sum(1 for r in fake.requests if r.doc_id == bad) <= 3, "its retries, then perhaps one more"


def test_inline_index_run_commits_through_an_outage_exits_6_and_the_rerun_feeds_the_rest(
    sample_corpus, tmp_path, fake, model_cache, capsys
):
    out = tmp_path / "index"
    fake.fault = outage = Outage(up_for=5)
    cfg = index_config(
        "backend=local",
        "rasterize.window_pages=2",
        f"source.location={sample_corpus}",
        f"output.location={out}",
        "vespa.inline=true",
        f"vespa.endpoint.url={fake.url}",
        *SMALL,
    )
    assert index_job.run(cfg) == index_job.EXIT_UNAVAILABLE == 6
    err = capsys.readouterr().err
    report = json.loads((out / "run_report.json").read_text())
    page_ids = IndexLocation(str(out)).read_pages(["page_id"]).column("page_id").to_pylist()
    assert report["pages_indexed"] == len(page_ids) == 19, "the index is committed"
    assert not report["files_unaccounted"]
    assert len(fake.documents) == 5
    written = report["written"]
    assert written["vespa_acked"] == 5 and written["vespa_unavailable"] == 14
    # One block waited the outage out; the later blocks and the closing reconcile did not wait again.
    assert written["stage_seconds"]["write"] < MAX_OUTAGE_S + SLACK_S, written["stage_seconds"]
    assert report["vespa"]["unavailable"] and report["vespa"]["seconds"] < SLACK_S
    assert (
        "Vespa unavailable for more than vespa.feed.max_outage_s (2 s); pages committed to the index, "
        f"14 pages waiting to be fed: rerun or python -m jobs.feed index={out}"
    ) in err

    outage.end()
    assert index_job.run(cfg) == 0, capsys.readouterr().err
    rerun = json.loads((out / "run_report.json").read_text())
    assert rerun["plan"]["to_process"] == 0 and rerun["vespa"]["puts_acked"] == 14
    assert set(fake.documents) == {vespa_id(p) for p in page_ids}
    assert all(fake.put_counts[vespa_id(p)] == 1 for p in page_ids)


def test_a_write_task_in_another_process_stops_feeding_once_one_gave_up(tmp_path, fake):
    """Ray runs the block writer in many processes: one that waited out the outage tells the others
    (the feed log's outage file), which give up at their first failure instead of waiting again."""
    write_index(tmp_path, {"/data/a.pdf": (3, 0)})
    location = IndexLocation(str(tmp_path))
    pages = location.read_pages()
    feed = inline.InlineFeed(VespaEndpoint(url=fake.url), DocumentSettings(), FeedSettings(max_outage_s=60.0))
    fake.fault = Outage()
    run_id = "run1"
    replay.FeedLog(location, feed.endpoint).record_outage(run_id, 60.0)  # what the first process wrote
    writer = inline.FeedingWriter(PartWriter(location, "tiny", "cfg1", run_id), feed, location)
    started = time.monotonic()
    assert writer.feed(pages) == {"vespa_acked": 0, "vespa_failed": 0, "vespa_not_fed": 3, "vespa_unavailable": 3}
    assert time.monotonic() - started < 5, "gave up at the first failure, not after max_outage_s"
    sent = len(fake.requests)
    assert writer.feed(pages)["vespa_unavailable"] == 3 and len(fake.requests) == sent, "later blocks send nothing"
    other_run = inline.FeedingWriter(PartWriter(location, "tiny", "cfg1", "run2"), feed, location)
    fake.fault = None
    assert other_run.feed(pages)["vespa_acked"] == 3, "another run's outage does not stop this one"


def test_outage_clock_counts_consecutive_failures_across_operations():
    clock = OutageClock(max_outage_s=0.2)
    before = time.monotonic()
    clock.failed(time.monotonic())
    assert not clock.expired and 0 < clock.remaining() <= 0.2
    time.sleep(0.1)
    clock.answered(before)  # sent before the outage began: still down
    assert clock.down_since is not None
    clock.answered(time.monotonic())  # an answer to a request sent since ends the outage
    assert clock.down_since is None and clock.remaining() == 0.2
    clock.failed(time.monotonic())
    time.sleep(0.25)
    clock.failed(time.monotonic())
    assert clock.expired and clock.down_for() >= 0.2
    probe = OutageClock(max_outage_s=60, probe=True)
    probe.failed(time.monotonic())
    assert probe.expired, "after an outage already waited out, the first failure gives up"


def test_run_operations_stops_sending_after_the_deadline(fake):
    fake.fault = Outage()
    endpoint = VespaEndpoint(url=fake.url)
    settings = FeedSettings(max_in_flight=2, request_timeout_s=1.0, backoff_initial_s=0.05, max_outage_s=0.5)
    ops = [Operation(f"p{i}", None) for i in range(50)]
    result = run_operations(ops, endpoint, settings)
    assert result.unavailable and result.outage_s >= 0.5
    assert {o.state for o in result.outcomes} <= {"unavailable", "not_attempted"}
    assert len(result.outcomes) < 50, "operations after the deadline are never pulled"


# -- the feed log ---------------------------------------------------------------------------------


def test_feed_log_stays_bounded_over_many_runs_and_replays_stay_correct(tmp_path, fake):
    endpoint = VespaEndpoint(url=fake.url)
    location = IndexLocation(str(tmp_path))

    def feed(**kwargs):
        return replay.replay(location, endpoint, DocumentSettings(), FAST, **kwargs)

    corpus = dict(CORPUS)
    sizes = []
    for run in range(8):
        corpus["/data/doc00.pdf"] = (3, run)  # one document changes every run: 3 puts and 3 removes
        write_index(tmp_path, corpus)
        report = feed(mode="full" if run % 2 else "resume", checkpoint_every=5)
        assert report["complete"]
        parts = log_parts(tmp_path)
        sizes.append((len(parts), sum(pq.read_metadata(p).num_rows for p in parts)))
    # Without compaction the log grows by every run's outcomes: 46 part files, 210 rows after 8 runs.
    # With it: at most COMPACT_PARTS parts and twice the 36 live rows, plus what one run appends (8, 39).
    assert max(n for n, _ in sizes) <= replay.COMPACT_PARTS + 8, sizes
    assert max(rows for _, rows in sizes) <= 2 * 36 + 39, sizes
    assert sizes[-1][0] < 16 and sizes[-1][1] < 100, sizes
    page_ids = location.read_pages(["page_id"]).column("page_id").to_pylist()
    again = feed()
    assert again["puts_planned"] == 0 and again["removes_planned"] == 0
    assert set(fake.documents) == {vespa_id(p) for p in page_ids}
    log = replay.FeedLog(location, endpoint)
    parts, _, latest = log.latest()
    log.compact(parts, latest)
    [merged] = log_parts(tmp_path)
    assert pq.read_metadata(merged).num_rows == 36, "removed pages leave the log; every page is there once"
    assert set(log.acked_state()) == set(page_ids)


def test_compaction_keeps_a_delete_on_request_and_drops_superseded_rows(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)
    endpoint = VespaEndpoint(url=fake.url)
    location = IndexLocation(str(tmp_path))
    replay.replay(location, endpoint, DocumentSettings(), FAST, checkpoint_every=1)  # 36 parts
    log = replay.FeedLog(location, endpoint)
    gone = page_ids[0]
    log.append([Outcome(gone, "delete", "acked", 200, 1, "deleted on request", log.acked_state()[gone])], "delete")
    report = replay.replay(location, endpoint, DocumentSettings(), FAST)
    assert report["log_compaction"] == {"log_parts_merged": 37, "log_rows_kept": 36}
    assert report["puts_planned"] == 0, "the deleted page stays deleted"
    assert log.acked_state()[gone]["op"] == "delete"


def test_compaction_never_shadows_rows_appended_while_it_ran(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)
    endpoint = VespaEndpoint(url=fake.url)
    location = IndexLocation(str(tmp_path))
    replay.replay(location, endpoint, DocumentSettings(), FAST, checkpoint_every=10)
    log = replay.FeedLog(location, endpoint)
    parts, _, latest = log.latest()
    # Another feed acknowledges a removal after this compaction read the log, before it wrote.
    row = log.acked_state()[page_ids[0]]
    log.append([Outcome(page_ids[0], "remove", "acked", 200, 1, "", row)], "other")
    log.compact(parts, latest)
    assert page_ids[0] not in replay.FeedLog(location, endpoint).fed_pages()


def test_a_replay_killed_inside_compaction_loses_nothing(tmp_path, fake):
    page_ids = write_index(tmp_path, CORPUS)
    endpoint = VespaEndpoint(url=fake.url)
    location = IndexLocation(str(tmp_path))
    replay.replay(location, endpoint, DocumentSettings(), FAST, checkpoint_every=1)
    before = replay.FeedLog(location, endpoint).acked_state()
    args = ["-m", "jobs.feed", f"index={tmp_path}", f"vespa.endpoint.url={fake.url}"]
    killed = run_python(args, env={"PIPELINES_FAILPOINTS": "feed_log_between_write_and_delete"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(log_parts(tmp_path)) == 37, "the merged part is written, the old ones are still there"
    assert replay.FeedLog(location, endpoint).acked_state() == before
    report = replay.replay(location, endpoint, DocumentSettings(), FAST)
    assert report["puts_planned"] == 0 and report["log_compaction"]["log_parts_merged"] == 37
    assert len(log_parts(tmp_path)) == 1 and all(fake.put_counts[vespa_id(p)] == 1 for p in page_ids)
