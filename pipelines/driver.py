"""The index job's driver: a run is five small phases over one :class:`IndexRun`.

1. :func:`prepare`: list the source, start the backend (which checks the plan can be scheduled),
   open the index (overwrite, config check, recovery of killed runs), record the config;
2. :func:`plan`: decide per listed file what this run does (:meth:`Ledger.plan`);
3. :func:`execute`: run the stages on the backend into the composed block writer (index part files,
   plus Vespa when feeding inline);
4. :func:`commit`: commit the run's complete documents to the ledger, compact;
5. :func:`reconcile_feed` and :func:`report`: bring Vespa in step (inline feeding), write the report.

Config is validated (:func:`pipelines.config.load_index_config`) before any phase runs; stages and
the Ray wiring live in :mod:`pipelines.stages` and :mod:`pipelines.backends`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from pipelines import backends, environment, io, progress, schema
from pipelines.backends.base import Backend, StagePlan
from pipelines.config import IndexJobConfig, absolute, load_index_config
from pipelines.errors import ConfigError
from pipelines.index import accounting, lease
from pipelines.index.ledger import Plan
from pipelines.index.location import IndexLocation
from pipelines.index.storage import CONFIG_FILE, REPORT_FILE
from pipelines.index.writer import PartWriter
from pipelines.redaction import redact
from pipelines.testing import failpoints
from pipelines.vespa.inline import InlineFeed

logger = logging.getLogger(__name__)


@dataclass
class IndexRun:
    """What the phases of one run share; each phase fills in its part."""

    job: IndexJobConfig
    config_yaml: str  # the resolved config as given, secrets redacted
    stage_plan: StagePlan
    backend: Backend
    inline: InlineFeed | None
    source: str
    location: IndexLocation
    lease: lease.Lease
    files: list[io.SourceFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = 0.0
    started_at: dt.datetime | None = None
    recovered: list[dict[str, Any]] = field(default_factory=list)
    work: Plan | None = None
    totals: dict[str, Any] = field(default_factory=dict)
    commit: dict[str, Any] = field(default_factory=dict)
    compaction: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    vespa: dict[str, Any] | None = None


def run_index(cfg: DictConfig) -> dict[str, Any]:
    """Run the indexing job described by ``cfg``; returns the run report (also written to the index).

    In ``incremental`` mode (default) only new and changed sources are processed, and a run that was
    killed is committed first, so its finished documents are kept (see :mod:`pipelines.index.ledger`).

    Raises :class:`ConfigError` on bad configuration before any work starts (including an index
    built with another model or config), ``FileNotFoundError``/``PermissionError`` when the input or
    output location is missing or denied, :class:`~pipelines.index.lease.IndexLocked` when another run
    writes the index, :class:`~pipelines.index.lease.LeaseLost` when another run took it over meanwhile.
    """
    job = load_index_config(cfg)
    run = prepare(job, OmegaConf.to_yaml(OmegaConf.create(redact(OmegaConf.to_container(cfg, resolve=True)))))
    try:
        plan(run)
        execute(run)
        commit(run)
        reconcile_feed(run)
        return report(run)
    finally:
        run.lease.release()


def prepare(job: IndexJobConfig, config_yaml: str) -> IndexRun:
    """List the inputs, start the backend, take the index's lease, open the index and record the config.
    Nothing in the index changes before the listing, the output bucket and the backend's resource check
    have passed; a run that finds the index held by another fails before it starts the backend."""
    inline = InlineFeed.from_config(job.vespa)
    source = absolute(job.source.location)
    output = absolute(job.output.location)
    files, skipped = list_source(job)
    if not files:
        msg = f"no input files matching {list(job.source.suffixes)} under {source!r}"
        raise ConfigError(msg)
    logger.info("listed %d input files under %s (%d skipped by suffix)", len(files), source, len(skipped))
    io.require_bucket(output, job.output.storage_options, "output")
    location = IndexLocation(output, job.output.storage_options)
    lease.ensure_free(location.fs, location.root, output)  # fail fast; acquire() below is what takes it
    stage_plan = job.stage_plan()
    backend = backends.create(job.backend, job.ray, backends.worker_env())
    backend.start(stage_plan)  # before touching an existing index: a plan that cannot run changes nothing
    run_id = uuid.uuid4().hex
    held = lease.acquire(location.fs, location.root, output, run_id, job.lease)
    location.fence = held  # from here on every write of this run holds the lease (pipelines.index.lease)
    run = IndexRun(job, config_yaml, stage_plan, backend, inline, source, location, held, files, skipped, run_id)
    try:
        failpoints.hit("open_index")
        book = location.ledger
        try:
            if job.output.mode == "overwrite":
                location.clear_tables()
            book.check_config(job.model.name, job.config_hash(), job.vector_settings(), embedding_dim=job.spec.dim)
        except (FileNotFoundError, PermissionError) as exc:
            raise io.storage_error(output, exc, "output") from exc
        run.recovered = book.recover({f.uri: f.version for f in files})  # listed after the killed runs' reads
        location.write_text(CONFIG_FILE, config_yaml)
    except BaseException:
        held.release()
        raise
    return run


def list_source(job: IndexJobConfig) -> tuple[list[io.SourceFile], list[str]]:
    """The complete listing of the source (:func:`pipelines.io.list_inputs`)."""
    source = job.source
    return io.list_inputs(
        absolute(source.location), tuple(source.suffixes), glob=source.glob, storage_options=source.storage_options
    )


def listed_after_work(run: IndexRun) -> dict[str, str] | None:
    """The source's versions listed again once the work is done, so the commit records no version a file had
    only before it was read (:meth:`~pipelines.index.ledger.Ledger.commit`); None when nothing was read."""
    if not run.work.process and not run.work.aliases:
        return None
    return {f.uri: f.version for f in list_source(run.job)[0]}


def plan(run: IndexRun) -> None:
    """Decide what this run does with every listed file and write the plan before any work starts."""
    run.started = time.perf_counter()
    run.started_at = dt.datetime.now(dt.UTC)
    source = run.job.source
    run.work = run.location.ledger.plan(
        run.files,
        run.run_id,
        storage_options=source.storage_options,
        sync=source.sync,
        sync_root=io.location_uri(run.source, source.storage_options),
        retry_failed=source.retry_failed,
        max_retries=source.max_retries,
        hash_threads=source.hash_threads,
        sync_max_removed=source.sync_max_removed,
        sync_force=source.sync_force,
    )
    logger.info("plan: %s", run.work.counts())


def execute(run: IndexRun) -> None:
    """Run the stages over the files to process, into the index (and Vespa, when feeding inline),
    printing progress lines meanwhile (:mod:`pipelines.progress`)."""
    if not run.work.process:
        return
    writer = PartWriter(run.location, run.job.model.name, run.job.config_hash(), run.run_id)
    block_writer = run.inline.writer(writer, run.location) if run.inline else writer
    sources = pa.table(
        {"source_uri": [f.uri for f in run.work.process], "source_size": [f.size for f in run.work.process]},
        schema=schema.SOURCE_SCHEMA,
    )
    counter = progress.Progress(len(run.work.process))
    labels = {"index": run.location.location, "run_id": run.run_id}
    with progress.ProgressReporter(counter, run.job.progress, labels=labels) as reporter:
        if not reporter.active:  # a terminal: Ray Data draws its bars, nothing to count
            run.totals = run.backend.execute(sources, run.stage_plan, block_writer)
            return
        with run.backend.progress_relay(counter.add) as send:
            run.totals = run.backend.execute(sources, run.stage_plan, progress.ProgressWriter(block_writer, send))
        reporter.totals = run.totals


def commit(run: IndexRun) -> None:
    """Commit the run's complete documents, then compact this run's parts and any a crash left, delete
    the parts earlier compactions retired once their grace period is over, and merge the ledger's part
    files into a snapshot when there are many. Every write is fenced by the lease (a run that lost the
    index to another raises :class:`~pipelines.index.lease.LeaseLost` before it writes anything more)."""
    failpoints.hit("before_commit")
    run.lease.check()  # fail before reading the run's parts; each write below checks again
    failpoints.hit("commit_after_lease_check")
    book = run.location.ledger
    grace_s = run.job.output.compaction_grace_s
    run.commit = book.commit(run.run_id, listed_after_work(run))
    compacted_runs, compact_tags = book.compaction_due()
    run.compaction = run.location.compact(compact_tags, grace_s)
    book.mark_compacted(compacted_runs, run.compaction)
    run.compaction["retired_parts_deleted"] = book.collect_retired(grace_s)
    if book.snapshot_due():  # one ledger part per commit: merge them so reads stay one file, not one per run
        run.compaction.update(book.snapshot(run.run_id))
    run.wall_s = time.perf_counter() - run.started


def reconcile_feed(run: IndexRun) -> None:
    """Feeding inline: feed what was not acknowledged, remove stale pages (and, with sync, removed ones)."""
    if run.inline is not None:
        run.vespa = run.inline.reconcile(run.location, run.job.source.sync, run.totals)


def report(run: IndexRun) -> dict[str, Any]:
    """The run report: the run, the accounting of every listed file, totals of the index; also written
    to ``<index>/run_report.json``."""
    job, wall_s = run.job, run.wall_s
    summary = accounting.summarize(run.location, run.files, run.work)
    pages_embedded = int(run.totals.get("pages", 0))
    failed_rate = summary["files_failed_entirely"] / len(run.files)
    out = {
        "run_id": run.run_id,
        "started_at": run.started_at.isoformat(),
        "wall_seconds": round(wall_s, 3),
        "pages_embedded": pages_embedded,
        "pages_per_second": round(pages_embedded / wall_s, 3) if wall_s > 0 else None,
        "backend": job.backend,
        "mode": job.output.mode,
        "source": run.source,
        "index": run.location.location,
        "model": job.model.name,
        "is_test_model": job.spec.is_test_model,
        "embedding_dim": job.spec.dim,
        "config_hash": job.config_hash(),
        "settings": job.vector_settings(),
        "plan": run.work.counts(),
        "recovered_runs": run.recovered,
        "commit": run.commit,
        "compaction": run.compaction,
        "written": run.totals,
        **summary,
        "failed_rate": round(failed_rate, 4),
        "max_error_rate": job.max_error_rate,
        "error_rate_exceeded": failed_rate > job.max_error_rate,
        "files_skipped_by_suffix": run.skipped,
        "suffixes": list(job.source.suffixes),
        "versions": environment.versions(("ray", "torch", "transformers", "colpali-engine", "pyarrow", "pdf2image")),
        "vespa": run.vespa,
    }
    out = redact(out)  # locations and error messages may carry credentials (URL user information)
    run.location.write_text(REPORT_FILE, json.dumps(out, indent=2, default=str))
    return out
