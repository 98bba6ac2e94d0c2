"""The ledger: what was done with each source object, so reruns do only what changed and a killed
run resumes where it stopped.

Layout under the index root::

    ledger/index.json                    model, config hash and settings the index holds (one per index)
    ledger/sources/part-*.parquet        append-only rows, one per source per commit; the latest row wins
    ledger/runs/<run_id>/plan.parquet    what a run set out to do, written before any work starts
    ledger/runs/<run_id>/committed.json  written once the run's outcome is in ``sources``
    ledger/retired/part-*.parquet        part files compaction took out of the index, deleted after a
                                         grace period (:meth:`Ledger.retire`)

A run goes through four steps, each safe to interrupt anywhere:

1. **Plan.** List the source; compare with the ledger. Per source: ``unchanged`` (same version as
   recorded: skipped without reading it), ``process``, ``alias`` (same bytes as a document already
   indexed, or being indexed by another path in this run: recorded, not embedded again), or
   ``remove`` (gone from the source, with sync on). Only files whose size collides with another
   candidate or with an indexed document are hashed up front; any other file cannot be a duplicate.
2. **Work.** Workers write page and error part files tagged with the run id. None of it is visible.
3. **Commit.** Read the run's parts; a processed document is complete when every page is a page row
   or a page error row (or it has a document-level error). Append ledger rows for complete documents
   and their aliases, then ``committed.json``. Incomplete documents get no row and are redone.
4. **Compact.** Rewrite part files holding rows that are no longer visible, and retire the parts
   they replace: those stay readable for ``output.compaction_grace_s`` (a reader that listed them
   before finishes its read) and a later run deletes them.

A run that died before step 3 is committed by the next run before it plans (:meth:`Ledger.recover`),
so documents it finished are not redone, and its half-written documents are simply invisible.
Every write of these steps goes through the index's fence (:mod:`pipelines.index.storage`): a run
that lost its lease to another writes none of them.

**Visibility** (what readers of the index see): a page row belongs to the index iff its document is
referenced by a live ledger row (latest row of its source, status ``indexed`` or ``failed``) whose
``commit_run`` is the run tag of the part file holding the row; repeated rows of one page (a retried
Ray write) count once. An index without a ``ledger/`` directory (written by tools that bypass the
run protocol) is read as is.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import ids, io, schema
from pipelines.errors import ConfigError
from pipelines.index.storage import ERRORS_DIR, PAGES_DIR, PartStore, concat, latest_rows
from pipelines.testing import failpoints

logger = logging.getLogger(__name__)

LEDGER_DIR = "ledger"
SOURCES_DIR = "ledger/sources"
RUNS_DIR = "ledger/runs"
INDEX_META = "ledger/index.json"
RETIRED_DIR = "ledger/retired"

#: Ledger part files (one per commit) beyond which a run merges them into one snapshot (:meth:`Ledger.snapshot`).
SNAPSHOT_PARTS = 16

INDEXED, FAILED, REMOVED = "indexed", "failed", "removed"
LIVE = (INDEXED, FAILED)
PROCESS, ALIAS, REMOVE = "process", "alias", "remove"

#: Error types worth another attempt on the next run even when the file did not change.
RETRYABLE_ERRORS = frozenset({"read_failed", "timeout", "memory_limit"})
#: Fraction of the indexed files a ``source.sync`` run may remove without ``source.sync_force``.
DEFAULT_SYNC_MAX_REMOVED = 0.1
#: Retries of a retryable failure of one file version, across runs, before it is treated as permanent
#: (until the file changes, or ``retry_failed``): ``source.max_retries``.
DEFAULT_MAX_RETRIES = 1

LEDGER_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_size", pa.int64()),
        pa.field("source_version", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("status", pa.string()),  # indexed | failed | removed
        pa.field("pages", pa.int32()),  # pages in the index for this document
        pa.field("page_errors", pa.int32()),  # pages recorded as errors
        pa.field("error_type", pa.string()),  # document-level error, or the most common page error
        pa.field("error_message", pa.string()),
        pa.field("retry", pa.bool_()),  # a retryable error: the next run processes it again
        pa.field("duplicate_of", pa.string()),  # for aliases: the source whose bytes were indexed
        pa.field("commit_run", pa.string()),  # the run whose part files hold this document's rows
        pa.field("run_id", pa.string()),  # the run that recorded this row
        pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
        # runs in a row that ended this source version with a retryable error (null in older ledgers: 0)
        pa.field("attempts", pa.int32()),
    ]
)

#: One row per retired part file (:meth:`Ledger.retire`); paths relative to the index root, so a copied
#: index never deletes the original's files.
RETIRED_SCHEMA = pa.schema(
    [pa.field("path", pa.string(), nullable=False), pa.field("retired_at", pa.timestamp("us", tz="UTC"))]
)

PLAN_SCHEMA = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_size", pa.int64()),
        pa.field("source_version", pa.string()),
        pa.field("doc_id", pa.string()),  # known up front only for hashed files
        pa.field("action", pa.string()),  # process | alias | remove
    ]
)


class SyncRefused(RuntimeError):
    """``source.sync`` would remove more of the index than ``source.sync_max_removed`` allows."""


@dataclass
class Plan:
    """What one run will do. ``process`` rows are the pipeline's input."""

    run_id: str
    process: list[io.SourceFile] = field(default_factory=list)
    aliases: list[tuple[io.SourceFile, str]] = field(default_factory=list)  # (file, doc_id)
    removes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # recorded sources not listed any more (sync off)
    retry_exhausted: list[str] = field(default_factory=list)  # unchanged: retryable failures, retries used up
    hashed: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "to_process": len(self.process),
            "duplicates": len(self.aliases),
            "to_remove": len(self.removes),
            "unchanged": len(self.unchanged),
            "missing_from_source": len(self.missing),
            "retry_exhausted": len(self.retry_exhausted),
            "hashed_up_front": self.hashed,
        }


class Ledger:
    """The ledger of one index, kept in its part-file storage.

    :meth:`state` is cached: the first call reads every ledger part file, later calls only the parts
    written since (they are append-only and their names sort in write order). The cache is per
    instance and never pickled (a Ledger travels to Ray workers inside the part writer's location).
    """

    def __init__(self, location: PartStore):
        self.location = location
        self.fs = location.fs
        self._parts: list[str] = []  # the ledger part files folded into _latest, in name order
        self._latest: dict[str, dict[str, Any]] = {}
        self._derived: dict[str, Any] = {}  # values computed from _latest (see derived())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_parts": [], "_latest": {}, "_derived": {}}

    # -- reading ---------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.location.exists(LEDGER_DIR)

    def state(self) -> dict[str, dict[str, Any]]:
        """The latest row of every source ever recorded, by URI. Read-only: the dict (and its rows) is
        shared by every caller until the ledger changes, which gives a new dict."""
        for attempt in range(3):
            parts = self.location.part_files(SOURCES_DIR)
            if parts[: len(self._parts)] != self._parts:  # not an append: cleared (overwrite) or snapshotted
                self._parts, self._latest, self._derived = [], {}, {}
            new = parts[len(self._parts) :]
            try:
                tables = [self.location.read_part(path, LEDGER_SCHEMA) for path in new]
            except FileNotFoundError:  # merged into a snapshot by another run since listed: list again
                if attempt == 2:
                    raise
                continue
            if tables:
                latest = dict(self._latest)  # copy on write: earlier callers keep the state they were given
                for row in latest_rows(pa.concat_tables(tables), "source_uri").to_pylist():  # rows in write order
                    latest[row["source_uri"]] = row
                self._parts, self._latest, self._derived = parts, latest, {}
            return self._latest
        raise AssertionError("unreachable")

    def derived(self, name: str, build: Callable[[dict[str, dict[str, Any]]], Any]) -> Any:
        """``build(state)``, computed once per ledger state (e.g. the visibility rules readers apply)."""
        state = self.state()
        if name not in self._derived:
            self._derived[name] = build(state)
        return self._derived[name]

    def read_meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.location.read_text(INDEX_META))  # read_text asks the store, past any cache
        except FileNotFoundError:
            return None

    # -- the run protocol ------------------------------------------------------------------------

    def check_config(
        self, model: str, config_hash: str, settings: Mapping[str, Any], embedding_dim: int | None = None
    ) -> None:
        """Record the index's model, its vector width and config hash, or refuse to mix in vectors of another
        config.

        Raises :class:`ConfigError` when the index was built with a different config hash.
        """
        meta = self.read_meta()
        if meta is None:
            record = {"model": model, "config_hash": config_hash, "settings": dict(settings)}
            if embedding_dim is not None:
                record["embedding_dim"] = int(embedding_dim)
            record["created_at"] = _now().isoformat()
            self.location.write_text(INDEX_META, json.dumps(record, indent=2, default=str))
            return
        if meta["config_hash"] != config_hash:
            changed = sorted(
                k for k in set(meta.get("settings", {})) | set(settings) if meta["settings"].get(k) != settings.get(k)
            )
            msg = (
                f"the index at {self.location.location!r} holds vectors from model {meta['model']!r} "
                f"(config_hash {meta['config_hash']}); this run would write {model!r} (config_hash {config_hash}; "
                f"different: {', '.join(changed) or 'settings'}). A different model or pooling/render config is a "
                "different index: choose a new output.location, or rebuild this one with output.mode=overwrite"
            )
            raise ConfigError(msg)

    def pending_runs(self) -> list[str]:
        """Runs that wrote a plan but never committed (killed or crashed), oldest first."""
        pending = [
            run for run, names in self._runs().items() if "plan.parquet" in names and "committed.json" not in names
        ]
        return sorted(pending, key=self._run_started)

    def _run_started(self, run_id: str) -> float:
        return self.fs.modified(self.location.path(RUNS_DIR, run_id, "plan.parquet")).timestamp()

    def _runs(self) -> dict[str, set[str]]:
        """Run id -> names of the files in its directory."""
        root = self.location.path(RUNS_DIR).rstrip("/")
        runs: dict[str, set[str]] = {}
        for path in self.location.find(RUNS_DIR):  # one recursive listing, not one per run (object stores)
            run_id, _, name = path[len(root) :].strip("/").partition("/")
            runs.setdefault(run_id, set()).add(name)
        return runs

    def compaction_due(self) -> tuple[list[str], set[str]]:
        """(committed runs not yet compacted, the part-file tags their compaction must look at)."""
        runs, tags = [], set()
        for run_id, names in sorted(self._runs().items()):
            if "committed.json" in names and "compacted.json" not in names:
                summary = json.loads(self.location.read_text(posixpath.join(RUNS_DIR, run_id, "committed.json")))
                runs.append(run_id)
                tags.update(summary.get("compact_tags", [run_id]))
        return runs, tags

    def snapshot_due(self, max_parts: int = SNAPSHOT_PARTS) -> bool:
        """More than ``max_parts`` ledger part files: every first read of the state reads them all."""
        return len(self.location.part_files(SOURCES_DIR)) > max_parts

    def snapshot(self, run_id: str) -> dict[str, int]:
        """Merge the ledger's part files into one holding the latest row of every source, tagged ``run_id``.

        The snapshot is written as a new part (its name sorts after the parts it replaces), then those parts
        are deleted. Readers see the same state at every moment: until the deletes its rows are the latest
        anyway, and a reader that listed a part deleted meanwhile lists again (:meth:`state`). A crash in
        between leaves rows twice, which the next snapshot merges. Returns counts for the run report.
        """
        replaced = self.location.part_files(SOURCES_DIR)
        tables = [self.location.read_part(path, LEDGER_SCHEMA) for path in replaced]
        latest = latest_rows(concat(tables, LEDGER_SCHEMA, None), "source_uri")
        path = self.location.write_part(SOURCES_DIR, latest, tag=run_id)
        failpoints.hit("snapshot_between_write_and_delete")
        self.location.delete(replaced)
        if replaced == self._parts:  # the cached state is what the snapshot holds: keep it
            self._parts = [path]
        else:
            self._parts, self._latest, self._derived = [], {}, {}
        logger.info("ledger snapshot: %d part files merged into %s (%d sources)", len(replaced), path, latest.num_rows)
        return {"ledger_parts_merged": len(replaced), "ledger_sources": latest.num_rows}

    def mark_compacted(self, run_ids: Iterable[str], counts: Mapping[str, int]) -> None:
        for run_id in run_ids:
            self.location.write_text(posixpath.join(RUNS_DIR, run_id, "compacted.json"), json.dumps(dict(counts)))

    def retire(self, paths: Iterable[str], grace_s: float) -> None:
        """Take the part files ``paths`` (full paths, as ``part_files`` lists them) out of the index: they hold
        no row the ledger's current state shows, or only rows another part repeats. A reader that listed
        them under an earlier state may still be reading, so they are deleted by :meth:`collect_retired`
        once ``grace_s`` seconds have passed (at once when ``grace_s`` <= 0)."""
        paths = list(paths)
        if not paths:
            return
        if grace_s <= 0:
            self.location.delete(paths)
            return
        root = self.location.path("")
        relative = [path[len(root) :] if path.startswith(root) else path for path in paths]
        table = pa.table({"path": relative, "retired_at": [_now()] * len(relative)}, schema=RETIRED_SCHEMA)
        self.location.write_part(RETIRED_DIR, table)

    def retired(self) -> set[str]:
        """Full paths of the part files retired and not yet deleted (compaction leaves them alone)."""
        return {path for _, paths, _ in self._retired_lists() for path in paths}

    def collect_retired(self, grace_s: float) -> int:
        """Delete the part files retired more than ``grace_s`` seconds ago; returns how many."""
        deadline = _now() - dt.timedelta(seconds=max(0.0, grace_s))
        deleted = 0
        for listing, paths, retired_at in self._retired_lists():
            if retired_at > deadline:
                continue
            self.location.delete(paths)
            self.location.delete([listing])  # last: a run killed before this deletes the rest next time
            deleted += len(paths)
        return deleted

    def _retired_lists(self) -> list[tuple[str, list[str], dt.datetime]]:
        """``(list file, full paths of the parts it retired, when)`` of every retired list."""
        out = []
        for listing in self.location.part_files(RETIRED_DIR):
            table = self.location.read_part(listing, RETIRED_SCHEMA)
            paths = [self.location.path(path) for path in table.column("path").to_pylist()]
            retired_at = max((t for t in table.column("retired_at").to_pylist() if t is not None), default=_now())
            out.append((listing, paths, retired_at))
        return out

    def recover(self, listed: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Commit what every interrupted run finished; returns their commit summaries. ``listed``: as for
        :meth:`commit` (the source as listed now, after their reads)."""
        out = []
        for run_id in self.pending_runs():
            logger.info("recovering interrupted run %s: committing the documents it finished", run_id)
            out.append(self.commit(run_id, listed))
        return out

    def plan(
        self,
        files: Iterable[io.SourceFile],
        run_id: str,
        storage_options: Mapping[str, Any] | None = None,
        sync: bool = False,
        sync_root: str | None = None,
        retry_failed: bool = False,
        hash_threads: int = 8,
        hash_fn: Callable[[str], str] | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        sync_max_removed: float = DEFAULT_SYNC_MAX_REMOVED,
        sync_force: bool = False,
    ) -> Plan:
        """Decide what this run does with every listed file and write the plan (see the module docstring).

        ``sync`` marks recorded sources under ``sync_root`` that are no longer listed for removal;
        without it they stay and are reported as missing. ``files`` must be a complete listing
        (:func:`pipelines.io.list_inputs` never returns another). Unless ``sync_force``, a plan whose removals
        would take more than ``sync_max_removed`` (a fraction) of the files indexed under ``sync_root`` out of
        the index raises :class:`SyncRefused` before anything is written; a removed path whose document
        stays (moved, or still listed under another path) takes nothing out and does not count.

        ``retry_failed`` also reprocesses files that failed for a reason that is not retryable by default (e.g.
        after upgrading poppler), and retryable failures whose ``max_retries`` are used up (those are listed in
        ``retry_exhausted``).
        """
        files = list(files)
        state = self.state()
        plan = Plan(run_id)
        known: dict[str, dict[str, Any]] = {}  # doc_id -> its live row, if the document needs no work
        for row in state.values():
            if row["status"] in LIVE and row["doc_id"] and not _needs_retry(row, retry_failed, max_retries):
                known.setdefault(row["doc_id"], row)
        known_sizes = {row["source_size"] for row in known.values()}
        candidates = []
        for file in files:
            previous = state.get(file.uri)
            if (
                previous is not None
                and previous["status"] in LIVE
                and previous["source_version"] == file.version
                and not _needs_retry(previous, retry_failed, max_retries)
            ):
                plan.unchanged.append(file.uri)
                if previous["retry"]:
                    plan.retry_exhausted.append(file.uri)
            else:
                candidates.append(file)
        sizes = Counter(file.size for file in candidates)
        to_hash = [f for f in candidates if sizes[f.size] > 1 or f.size in known_sizes]
        digests = self._hash(to_hash, storage_options, hash_threads, hash_fn)
        plan.hashed = len(to_hash)
        claimed: set[str] = set()
        for file in candidates:
            doc_id = digests.get(file.uri)
            if doc_id is not None and (doc_id in known or doc_id in claimed):
                plan.aliases.append((file, doc_id))
            else:
                if doc_id is not None:
                    claimed.add(doc_id)
                plan.process.append(file)
        listed = {file.uri for file in files}
        gone = sorted(uri for uri, row in state.items() if row["status"] in LIVE and uri not in listed)
        for uri in gone:  # sorted once they are few, not the whole ledger (linear in the index size)
            if sync and (sync_root is None or _under(uri, sync_root)):
                plan.removes.append(uri)
            else:
                plan.missing.append(uri)
        if plan.removes and not sync_force:
            _check_removals(plan, state, digests, sync_root, sync_max_removed)
        self._write_plan(plan, digests)
        return plan

    def _hash(self, files, storage_options, threads, hash_fn) -> dict[str, str]:
        if not files:
            return {}
        digest = hash_fn or (lambda uri: io.content_hash(uri, storage_options))
        out: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = {pool.submit(digest, f.uri): f.uri for f in files}
            for future in concurrent.futures.as_completed(futures):
                try:
                    out[futures[future]] = ids.doc_id_from_sha256(future.result())
                except Exception as exc:  # processing will record why it cannot be read
                    logger.warning(
                        "cannot hash %s (%s); it will be processed and its error recorded", futures[future], exc
                    )
        return out

    def _write_plan(self, plan: Plan, digests: Mapping[str, str]) -> None:
        rows = [(f, digests.get(f.uri), PROCESS) for f in plan.process]
        rows += [(f, doc_id, ALIAS) for f, doc_id in plan.aliases]
        rows += [(io.SourceFile(uri, None, None), None, REMOVE) for uri in plan.removes]
        table = pa.table(
            {
                "source_uri": [f.uri for f, _, _ in rows],
                "source_size": [f.size for f, _, _ in rows],
                "source_version": [f.version for f, _, _ in rows],
                "doc_id": [doc_id for _, doc_id, _ in rows],
                "action": [action for _, _, action in rows],
            },
            schema=PLAN_SCHEMA,
        )
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        path = posixpath.join(RUNS_DIR, plan.run_id, "plan.parquet")
        self.location.write_bytes(path, buffer.getvalue().to_pybytes())

    def commit(self, run_id: str, listed: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Record the outcome of every planned source whose document is complete; returns a summary.

        ``listed`` is the source listed again after the work (URI -> version): a source whose version there
        is not the planned one changed while the run read it, so the bytes read are of an unknown version.
        Its row gets no version (``source_version`` null), and the next run processes it again instead of
        taking the new content for the one indexed. None: the planned versions are recorded as they are.

        Safe to repeat: committing a run twice appends identical rows, and the latest row wins.
        """
        with self.fs.open(self.location.path(RUNS_DIR, run_id, "plan.parquet"), "rb") as handle:
            planned = io.read_parquet(handle, schema=PLAN_SCHEMA).to_pylist()
        changed = _changed_since_planned(planned, listed)
        pages = _tagged(self.location, PAGES_DIR, schema.PAGES_TABLE_SCHEMA, run_id, PAGE_KEYS)
        errors = _tagged(self.location, ERRORS_DIR, schema.ERRORS_TABLE_SCHEMA, run_id, ERROR_KEYS)
        page_numbers: dict[str, set[int]] = {}
        page_counts: dict[str, int] = {}
        doc_ids: dict[str, str] = {}
        for row in pages:
            page_numbers.setdefault(row["source_uri"], set()).add(row["page_number"])
            page_counts[row["source_uri"]] = row["page_count"]
            doc_ids[row["source_uri"]] = row["doc_id"]
        errors_by_source: dict[str, list[dict]] = {}
        for row in errors:
            errors_by_source.setdefault(row["source_uri"], []).append(row)
            if row["page_count"] is not None:
                page_counts.setdefault(row["source_uri"], row["page_count"])

        state = self.state()
        live_by_doc = {r["doc_id"]: r for r in state.values() if r["doc_id"] and r["status"] in LIVE}
        now = _now()
        outcome: dict[str, dict[str, Any]] = {}  # doc_id -> row of the source that processed it
        records: list[dict[str, Any]] = []
        incomplete: list[str] = []
        for plan_row in planned:
            uri = plan_row["source_uri"]
            base = {
                "source_uri": uri,
                "source_size": plan_row["source_size"],
                "source_version": None if uri in changed else plan_row["source_version"],
                "duplicate_of": None,
                "commit_run": run_id,
                "run_id": run_id,
                "recorded_at": now,
            }
            if plan_row["action"] == PROCESS:
                record = _document_outcome(
                    base, plan_row["doc_id"], page_numbers.get(uri, set()), page_counts.get(uri), doc_ids.get(uri),
                    errors_by_source.get(uri, []),
                )  # fmt: skip
                if record is None:
                    incomplete.append(uri)
                    continue
                record["attempts"] = _attempts(record, state.get(uri))
                records.append(record)
                if record["doc_id"]:
                    outcome[record["doc_id"]] = record
            elif plan_row["action"] == REMOVE:
                previous = state.get(uri, {})
                records.append({**previous, **base, "status": REMOVED, "source_size": previous.get("source_size")})
        for plan_row in planned:
            if plan_row["action"] != ALIAS:
                continue
            doc_id = plan_row["doc_id"]
            source = outcome.get(doc_id) or live_by_doc.get(doc_id)
            if source is None:  # its document was being processed in this run and did not finish
                incomplete.append(plan_row["source_uri"])
                continue
            records.append(
                {
                    **source,
                    "source_uri": plan_row["source_uri"],
                    "source_size": plan_row["source_size"],
                    "source_version": None if plan_row["source_uri"] in changed else plan_row["source_version"],
                    "duplicate_of": source["source_uri"],
                    "run_id": run_id,
                    "recorded_at": now,
                }
            )
        if records:
            self.location.write_part(SOURCES_DIR, pa.Table.from_pylist(records, schema=LEDGER_SCHEMA), tag=run_id)
        failpoints.hit("commit_between_ledger_and_marker")
        # Part files that may now hold rows nobody sees: this run's (half-written documents, repeated
        # writes) and those of documents this run replaced or removed.
        compact_tags = {run_id}
        for record in records:
            previous = state.get(record["source_uri"])
            if (
                previous
                and previous["commit_run"]
                and (record["status"] == REMOVED or previous["doc_id"] != record["doc_id"])
            ):
                compact_tags.add(previous["commit_run"])
        by_status = Counter(r["status"] for r in records)
        summary = {
            "run_id": run_id,
            "recorded": len(records),
            "by_status": dict(sorted(by_status.items())),
            "duplicates": sum(1 for r in records if r["duplicate_of"]),
            "incomplete": sorted(incomplete),
            "compact_tags": sorted(compact_tags),
        }
        self.location.write_text(posixpath.join(RUNS_DIR, run_id, "committed.json"), json.dumps(summary, indent=2))
        return summary


def _changed_since_planned(planned: list[dict[str, Any]], listed: Mapping[str, str] | None) -> set[str]:
    """The planned sources (to process or alias) whose version in ``listed`` is not the planned one."""
    if listed is None:
        return set()
    return {
        row["source_uri"]
        for row in planned
        if row["action"] != REMOVE and listed.get(row["source_uri"]) != row["source_version"]
    }


PAGE_KEYS = ["source_uri", "doc_id", "page_number", "page_count"]
ERROR_KEYS = ["source_uri", "doc_id", "page_number", "page_count", "error_type", "error_message"]


def _tagged(location, directory: str, table_schema: pa.Schema, tag: str, columns: list[str]) -> list[dict]:
    rows: list[dict] = []
    for _, table in location.iter_part_files(directory, table_schema, columns, tags={tag}):
        rows.extend(table.to_pylist())
    return rows


def _document_outcome(base, planned_doc_id, pages: set[int], page_count, doc_id, errors) -> dict | None:
    """The ledger row of a processed source, or None when its document is not complete."""
    document_errors = [e for e in errors if e["page_number"] is None]
    if document_errors:
        first = document_errors[0]
        return {
            **base,
            "doc_id": first["doc_id"] or planned_doc_id,
            "status": FAILED,
            "pages": 0,
            "page_errors": 0,
            "error_type": first["error_type"],
            "error_message": (first["error_message"] or "")[:500],
            "retry": first["error_type"] in RETRYABLE_ERRORS,
        }
    page_errors = {e["page_number"]: e for e in errors}
    if page_count is None or not (pages | set(page_errors)) >= set(range(1, page_count + 1)):
        return None
    failed_pages = set(page_errors) - pages
    types = Counter(page_errors[n]["error_type"] for n in failed_pages)
    error_type = types.most_common(1)[0][0] if types else None
    return {
        **base,
        "doc_id": doc_id or next(iter(page_errors.values()))["doc_id"] or planned_doc_id,
        "status": INDEXED if pages else FAILED,
        "pages": len(pages),
        "page_errors": len(failed_pages),
        "error_type": error_type,
        "error_message": next((page_errors[n]["error_message"] or "")[:500] for n in sorted(failed_pages))
        if failed_pages
        else None,
        "retry": any(t in RETRYABLE_ERRORS for t in types),
    }


def _attempts(record: Mapping[str, Any], previous: Mapping[str, Any] | None) -> int:
    """Runs in a row that ended this source version with a retryable error (0 when it did not)."""
    if not record["retry"]:
        return 0
    same_version = (
        previous is not None
        and previous.get("retry")
        and previous.get("source_version") == record["source_version"]
        and previous.get("doc_id") == record["doc_id"]
    )
    return ((previous.get("attempts") or 0) if same_version else 0) + 1


def _needs_retry(row: Mapping[str, Any], retry_failed: bool, max_retries: int = DEFAULT_MAX_RETRIES) -> bool:
    """Process an unchanged source again: a retryable failure with retries left (``attempts`` <= ``max_retries``;
    null in older ledgers counts as 0), or, with ``retry_failed``, any failure."""
    retry = bool(row["retry"]) and (row.get("attempts") or 0) <= max_retries
    return retry or (retry_failed and (row["status"] == FAILED or (row["page_errors"] or 0) > 0))


def _check_removals(
    plan: Plan, state: Mapping[str, Mapping[str, Any]], digests: Mapping[str, str], root: str | None, limit: float
) -> None:
    """Raise :class:`SyncRefused` when ``plan`` takes more than ``limit`` of the files indexed under ``root`` out."""
    staying = {state[uri]["doc_id"] for uri in plan.unchanged} | {doc_id for _, doc_id in plan.aliases}
    staying |= {digests[f.uri] for f in plan.process if f.uri in digests}
    leaving = [uri for uri in plan.removes if state[uri]["doc_id"] is None or state[uri]["doc_id"] not in staying]
    indexed = sum(1 for uri, row in state.items() if row["status"] in LIVE and (root is None or _under(uri, root)))
    if len(leaving) > limit * indexed:
        msg = (
            f"source.sync=true would remove {len(leaving)} of the {indexed} files indexed under "
            f"{root or 'the source'} "
            f"({len(leaving) / indexed:.1%}), more than source.sync_max_removed={limit}; nothing was changed. "
            f"First removed: {', '.join(leaving[:5])}. If they are really gone, run again with "
            "source.sync_force=true (or a higher source.sync_max_removed); if not, check source.location"
        )
        raise SyncRefused(msg)


def _under(uri: str, root: str) -> bool:
    root = root.rstrip("/")
    return uri == root or uri.startswith(root + "/")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
