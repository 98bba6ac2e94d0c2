"""Feed an index to a Vespa target exactly once, resumably, and keep Vespa in step with the index.

The feed log (``<index>/vespa/<target key>/log/part-*.parquet``) records every final outcome per
document: which page was put or removed, with which config hash, and whether Vespa acknowledged it.
A page counts as fed only once a ``put`` of it with the index's current config hash was acked.

:func:`replay` reconciles the target with the index:

* ``resume`` (default): put pages not yet acked for this config (new, changed or previously failed
  pages, or the remainder of a feed stopped by a 507); ``full``: put every page again (a rebuilt
  cluster, a schema change). Puts overwrite: document ids are the deterministic page ids.
* Pages acked earlier that are no longer in the index are removed when their source URI is still in
  the index (the document changed, so its old pages are stale), or for any source when
  ``delete_missing`` is set (documents deleted from the source).

Outcomes are appended to the log every ``checkpoint_every`` operations, so a killed replay loses at
most that many acks (those pages are simply put again next time).

The log is compacted (:meth:`FeedLog.compact`): a replay reads it whole anyway, and when it holds
more than :data:`COMPACT_PARTS` part files, or more rows than twice the pages it still tells
anything about, the replay merges it into one part with the latest acknowledged row of each page,
so the log stays about the size of the index however many runs append to it.

A feed that gives up on a Vespa outage (``vespa.feed.max_outage_s``, see
:class:`~pipelines.vespa.feed.OutageClock`) leaves the pages it did not get acknowledged unacked in
the log: the next replay puts them. The report says ``unavailable``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.index import IndexLocation
from pipelines.index.storage import concat, latest_rows
from pipelines.testing import failpoints
from pipelines.vespa import documents
from pipelines.vespa.client import VespaEndpoint
from pipelines.vespa.feed import FeedResult, FeedSettings, Operation, OutageClock, Outcome, run_operations

logger = logging.getLogger(__name__)

MODES = ("resume", "full")
LOG_SCHEMA = pa.schema(
    [
        pa.field("page_id", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("op", pa.string()),  # put | remove | delete (removed on request: not re-put on resume)
        pa.field("state", pa.string()),  # acked | failed | blocked | unavailable | not_attempted
        pa.field("status", pa.int32()),
        pa.field("attempts", pa.int32()),
        pa.field("message", pa.large_string()),
        pa.field("at", pa.timestamp("us", tz="UTC")),
        pa.field("run_id", pa.string()),
    ]
)
META_COLUMNS = ["page_id", "doc_id", "source_uri", "config_hash"]
#: Feed log part files beyond which a replay compacts the log (:meth:`FeedLog.compact`).
COMPACT_PARTS = 16
#: Where an inline feed that gave up on an outage says so, for the other processes feeding the same run.
OUTAGE_FILE = "outage.json"


class FeedLog:
    """Log of feed outcomes for one (index, Vespa target) pair: appended to, compacted by replays."""

    def __init__(self, location: IndexLocation, endpoint: VespaEndpoint):
        self.location = location
        self.directory = posixpath.join("vespa", endpoint.target_key())
        self.root = location.path(self.directory)
        self.log_dir = posixpath.join(self.directory, "log")

    def append(self, outcomes: list[Outcome], run_id: str) -> None:
        if not outcomes:
            return
        now = dt.datetime.now(dt.UTC)
        table = pa.table(
            {
                "page_id": [o.doc_id for o in outcomes],
                "doc_id": [o.meta.get("doc_id") for o in outcomes],
                "source_uri": [o.meta.get("source_uri") for o in outcomes],
                "config_hash": [o.meta.get("config_hash") for o in outcomes],
                "op": [o.kind for o in outcomes],
                "state": [o.state for o in outcomes],
                "status": [o.status for o in outcomes],
                "attempts": [o.attempts for o in outcomes],
                "message": [o.message for o in outcomes],
                "at": [now] * len(outcomes),
                "run_id": [run_id] * len(outcomes),
            },
            schema=LOG_SCHEMA,
        )
        self.location.write_part(self.log_dir, table)

    def read(self) -> tuple[list[str], pa.Table]:
        """(the log's part files, all their rows in write order). A part merged away by a concurrent
        compaction between listing and reading makes it list again: the merged part holds its rows."""
        for attempt in range(3):
            parts = self.location.part_files(self.log_dir)
            try:
                tables = [self.location.read_part(path, LOG_SCHEMA) for path in parts]
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue
            return parts, concat(tables, LOG_SCHEMA, None)
        raise AssertionError("unreachable")

    def latest(self) -> tuple[list[str], int, pa.Table]:
        """(part files read, rows in them, the last acknowledged row of each page, in write order)."""
        parts, log = self.read()
        acked = log.filter(pc.equal(log.column("state"), "acked"))
        return parts, log.num_rows, latest_rows(acked, "page_id")

    def acked_state(self) -> dict[str, dict[str, Any]]:
        """Per page id, its last acknowledged operation (``op``, ``doc_id``, ``source_uri``, ``config_hash``)."""
        return state_of(self.latest()[2])

    def compact_due(self, parts: list[str], rows: int, latest: pa.Table) -> bool:
        """Worth merging: more than :data:`COMPACT_PARTS` part files, or more than twice the rows kept."""
        return len(parts) > 1 and (len(parts) > COMPACT_PARTS or rows > 2 * _kept(latest).num_rows)

    def compact(self, parts: list[str], latest: pa.Table) -> dict[str, int]:
        """Replace ``parts`` (as read by :meth:`latest`, which gave ``latest``) by one part holding what a
        replay needs of them: the last acknowledged row of each page whose last operation was a put or
        a delete on request (a removed page is the same as one never fed).

        Crash-safe like the ledger snapshot: the merged part is written first, named to sort right
        after the last part it replaces (so rows appended meanwhile by another feed stay the later
        ones), then the parts are deleted. Until then, or after a crash in between, the merged rows
        are the latest of those parts anyway; the next compaction merges them again.
        """
        kept = _kept(latest)
        if kept.num_rows:
            self.location.write_part(self.log_dir, kept, after=parts[-1])
        failpoints.hit("feed_log_between_write_and_delete")
        self.location.delete(parts)  # missing ones are skipped: a concurrent replay compacted the same parts
        logger.info("feed log %s: %d part files merged into %d rows", self.root, len(parts), kept.num_rows)
        return {"log_parts_merged": len(parts), "log_rows_kept": kept.num_rows}

    def record_outage(self, run_id: str, outage_s: float | None) -> None:
        """Note that run ``run_id`` gave up feeding on an outage (read by :meth:`gave_up`)."""
        self.write_json(OUTAGE_FILE, {"run_id": run_id, "outage_s": outage_s, "at": dt.datetime.now(dt.UTC)})

    def gave_up(self, run_id: str) -> bool:
        """Whether some process feeding run ``run_id`` gave up on an outage. Read with ``cat_file``, a
        direct GET on object stores, never a cached directory listing."""
        try:
            record = json.loads(self.location.fs.cat_file(self.location.path(self.directory, OUTAGE_FILE)))
        except FileNotFoundError:
            return False
        return record.get("run_id") == run_id

    def fed_pages(self) -> dict[str, str]:
        """page_id -> config hash of every page whose last acked operation is a put."""
        return {pid: row["config_hash"] for pid, row in self.acked_state().items() if row["op"] == "put"}

    def write_json(self, name: str, payload: dict) -> None:
        self.location.write_text(posixpath.join(self.directory, name), json.dumps(payload, indent=2, default=str))


def state_of(latest: pa.Table) -> dict[str, dict[str, Any]]:
    """``{page_id: {op, doc_id, source_uri, config_hash}}`` of a :meth:`FeedLog.latest` table."""
    return {row["page_id"]: row for row in latest.select(["page_id", *META_COLUMNS[1:], "op"]).to_pylist()}


def _kept(latest: pa.Table) -> pa.Table:
    return latest.filter(pc.not_equal(latest.column("op"), "remove"))


class _Checkpointer:
    """Collects outcomes and appends them to the log in chunks."""

    def __init__(self, log: FeedLog, run_id: str, every: int):
        self.log, self.run_id, self.every = log, run_id, max(1, every)
        self.buffer: list[Outcome] = []

    def __call__(self, outcome: Outcome) -> None:
        self.buffer.append(outcome)
        if len(self.buffer) >= self.every:
            self.flush()

    def flush(self) -> None:
        self.log.append(self.buffer, self.run_id)
        self.buffer = []


def page_operations(pages: pa.Table, settings: documents.DocumentSettings) -> Iterator[Operation]:
    """Put operations for the rows of an index ``pages`` table."""
    for doc in documents.iter_documents(pages, settings):
        fields = doc["fields"]
        meta = {key: fields[key] for key in ("doc_id", "source_uri", "config_hash")}
        yield Operation(doc["id"], fields, meta)


def plan(
    pages_meta: pa.Table, fed: dict[str, dict[str, Any]], mode: str, delete_missing: bool
) -> tuple[set[str], list[Operation]]:
    """(page ids to put, remove operations) that bring the target in line with the index.

    A page is put when it was never acked, was fed with another config hash, or was fed under a
    source URI the index no longer has for it (a moved file). Pages deleted on request stay deleted.
    """
    page_ids = pages_meta.column("page_id").to_pylist()
    hashes = pages_meta.column("config_hash").to_pylist()
    uris: dict[str, set[str]] = {}
    for pid, uri in zip(page_ids, pages_meta.column("source_uri").to_pylist(), strict=True):
        uris.setdefault(pid, set()).add(uri)
    to_put = set()
    for pid, config in zip(page_ids, hashes, strict=True):
        last = fed.get(pid, {})
        if mode == "full":
            to_put.add(pid)
        elif last.get("op") == "delete":
            continue  # deleted on request (jobs.feed delete.*): stays deleted until mode=full
        elif last.get("op") != "put" or last["config_hash"] != config or last["source_uri"] not in uris[pid]:
            to_put.add(pid)
    in_index = set(page_ids)
    sources = set(pages_meta.column("source_uri").to_pylist())
    removes = []
    for pid, row in sorted(fed.items()):
        if row["op"] != "put" or pid in in_index:
            continue
        if row["source_uri"] in sources or delete_missing:
            removes.append(Operation(pid, None, {k: row[k] for k in ("doc_id", "source_uri", "config_hash")}))
    return to_put, removes


def replay(
    location: IndexLocation,
    endpoint: VespaEndpoint,
    doc_settings: documents.DocumentSettings,
    feed_settings: FeedSettings,
    mode: str = "resume",
    delete_missing: bool = False,
    checkpoint_every: int = 500,
    clock: OutageClock | None = None,
) -> dict[str, Any]:
    """Bring ``endpoint`` in line with the index at ``location``; returns (and stores) the feed report.

    Never raises for per-document failures, a blocked feed or a Vespa outage: the report says what
    happened (``failed``, ``blocked``, ``unavailable``), and the log lets the next call resume.
    ``clock``: the outage deadline (default a fresh one of ``feed_settings.max_outage_s``). The log is
    compacted when due, before feeding (it has just been read whole).
    """
    if mode not in MODES:
        msg = f"feed mode must be one of {MODES}, got {mode!r}"
        raise ValueError(msg)
    run_id = uuid.uuid4().hex
    log = FeedLog(location, endpoint)
    log.write_json("target.json", endpoint.describe())
    pages_meta = location.read_pages(META_COLUMNS)
    parts, rows, latest = log.latest()
    compaction = log.compact(parts, latest) if log.compact_due(parts, rows, latest) else {}
    fed = state_of(latest)
    to_put, removes = plan(pages_meta, fed, mode, delete_missing)
    logger.info(
        "feeding %s: %d pages in index, %d to put, %d stale to remove (mode=%s)",
        endpoint.safe_url,
        pages_meta.num_rows,
        len(to_put),
        len(removes),
        mode,
    )
    checkpoint = _Checkpointer(log, run_id, checkpoint_every)

    def operations() -> Iterator[Operation]:
        # Puts first, then removes: a changed document's new pages are searchable before its old ones go.
        wanted = pa.array(sorted(to_put), pa.string())
        sent: set[str] = set()  # identical files at two paths share page ids: send each page once
        for part in location.iter_page_parts(documents.FEED_COLUMNS):
            part = part.filter(pc.is_in(part.column("page_id"), value_set=wanted))
            for op in page_operations(part, doc_settings) if part.num_rows else ():
                if op.doc_id not in sent:
                    sent.add(op.doc_id)
                    yield op
        for remove in removes:
            location.check_fence()  # a run that lost the index's lease deletes nothing (pipelines.index.lease)
            yield remove

    try:
        result = run_operations(operations(), endpoint, feed_settings, on_outcome=checkpoint, clock=clock)
    finally:
        checkpoint.flush()
    unique_pages = len(set(pages_meta.column("page_id").to_pylist()))
    report = feed_report(result, endpoint, mode, unique_pages, len(to_put), len(removes), run_id)
    report["max_outage_s"] = feed_settings.max_outage_s
    report["log_compaction"] = compaction
    log.write_json("feed_report.json", report)
    return report


def feed_report(
    result: FeedResult,
    endpoint: VespaEndpoint,
    mode: str,
    pages_in_index: int,
    planned_puts: int,
    planned_removes: int,
    run_id: str,
) -> dict[str, Any]:
    """Counts of one replay. Operations never sent (the feed stopped on a 507 or an outage) have no
    outcome, so what remains is counted from the plan: planned minus acked minus failed."""
    counts = {
        (kind, state): sum(1 for o in result.outcomes if o.kind == kind and o.state == state)
        for kind in ("put", "remove")
        for state in ("acked", "failed")
    }
    acked_puts = counts["put", "acked"]
    failures = [
        {"page_id": o.doc_id, "op": o.kind, "status": o.status, "attempts": o.attempts, "message": o.message}
        for o in result.outcomes
        if o.state == "failed"
    ]
    puts_remaining = planned_puts - acked_puts - counts["put", "failed"]
    removes_remaining = planned_removes - counts["remove", "acked"] - counts["remove", "failed"]
    return {
        "run_id": run_id,
        "target": endpoint.describe(),
        "mode": mode,
        "pages_in_index": pages_in_index,
        "pages_already_fed": pages_in_index - planned_puts,
        "puts_planned": planned_puts,
        "puts_acked": acked_puts,
        "puts_failed": counts["put", "failed"],
        "puts_remaining": puts_remaining,
        "removes_planned": planned_removes,
        "removes_acked": counts["remove", "acked"],
        "removes_failed": counts["remove", "failed"],
        "removes_remaining": removes_remaining,
        "retried_operations": sum(1 for o in result.outcomes if o.attempts > 1),
        "blocked": result.blocked,
        "blocked_message": result.blocked_message,
        "unavailable": result.unavailable,  # gave up on an outage longer than vespa.feed.max_outage_s
        "outage_s": result.outage_s,
        "seconds": round(result.seconds, 3),
        "puts_per_second": round(acked_puts / result.seconds, 2) if result.seconds > 0 else None,
        "complete": not failures and puts_remaining == 0 and removes_remaining == 0,
        "failures": failures[:100],
        "failures_total": len(failures),
    }


def feed_pages(
    location: IndexLocation,
    endpoint: VespaEndpoint,
    doc_settings: documents.DocumentSettings,
    feed_settings: FeedSettings,
    pages: pa.Table,
    run_id: str,
    clock: OutageClock | None = None,
) -> tuple[FeedResult, dict[str, int]]:
    """Inline feeding: put one written block of pages, log the outcomes; returns the result and counts
    for the run report (``vespa_unavailable``: pages left unfed because the feed gave up on an outage)."""
    log = FeedLog(location, endpoint)
    checkpoint = _Checkpointer(log, run_id, every=len(pages) or 1)
    try:
        result = run_operations(
            page_operations(pages, doc_settings), endpoint, feed_settings, on_outcome=checkpoint, clock=clock
        )
    finally:
        checkpoint.flush()
    acked, failed = result.count("acked"), result.count("failed")
    not_fed = pages.num_rows - acked - failed
    counts = {"vespa_acked": acked, "vespa_failed": failed, "vespa_not_fed": not_fed}
    return result, {**counts, "vespa_unavailable": not_fed if result.unavailable else 0}
