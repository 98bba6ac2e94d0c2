"""Progress of an index run you can follow in logs: files and pages done of planned, pages/s, ETA, errors.

Fed from the writer side, so every backend reports the same numbers: :class:`ProgressWriter` wraps the
block writer and turns each written block into a small delta (pages and error rows per source file);
the backend carries the deltas to the driver (:meth:`pipelines.backends.base.Backend.progress_relay`:
in process for the local loop, through a small actor on Ray), where :class:`Progress` counts them. A
:class:`ProgressReporter` prints one line every ``progress.interval_s`` to stderr when stderr is not a
terminal (where Ray Data draws its own bars) and a summary line at the end, and can rewrite a Prometheus
text file with the same counters (for node_exporter's textfile collector or any scraper of files)::

    2026-11-30T03:55:31Z progress: files 2/6 (0 failed), pages 7/≈21 (33%), 1.4 pages/s, ETA 10s, errors 0
    2026-11-30T03:55:45Z progress done: files 6/6 (0 failed), pages 19, error rows 0 in 27.1s, 0.9 pages/s

Pages planned are known only once documents are opened: the estimate is the page count of every
document started so far plus, for files not started yet, their mean. Progress is informational: nothing
here may fail a run (a delta that cannot be delivered is dropped, and logged at debug level).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa

from pipelines.backends.base import BlockWriter
from pipelines.io import write_local_atomic

logger = logging.getLogger(__name__)

#: Counters of :meth:`Progress.snapshot` exported as Prometheus gauges: name -> help text.
METRICS = {
    "files_planned": "Files this run set out to process.",
    "files_done": "Files whose every page is written as a page or an error row.",
    "files_failed": "Files that failed as a whole (document-level error row).",
    "pages_done": "Pages written (page rows; retried writes may count twice).",
    "pages_planned_estimate": "Pages of the started files plus their mean for each file not started yet.",
    "error_rows": "Error rows written (failed pages and failed files).",
    "pages_per_second": "Pages written per second since the first block was written.",
    "eta_seconds": "Seconds left at the current rate (-1 while unknown).",
    "elapsed_seconds": "Seconds since the run's work started.",
}
METRIC_PREFIX = "pdf_index_"


@dataclass
class ProgressConfig:
    """The ``progress`` config node (conf/index.yaml)."""

    #: Seconds between two progress lines (and metrics file updates).
    interval_s: float = 30.0
    #: Print progress lines: null = only when stderr is not a terminal (a terminal gets Ray Data's bars).
    lines: bool | None = None
    #: Prometheus text file rewritten at every interval and at the end (a local path); null = none.
    metrics_file: str | None = None

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            msg = f"progress.interval_s must be > 0 seconds, got {self.interval_s}"
            raise ValueError(msg)


def block_delta(block: pa.Table) -> dict[str, Any]:
    """What one written block of page records adds to the progress: ``{"pages": n, "error_rows": n,
    "sources": {uri: [page_count, [page numbers], document failed]}}`` (page numbers of page and
    page-error rows; a document-level error row has no page number and marks its file failed)."""
    columns = block.select(["source_uri", "page_number", "page_count", "error_type"]).to_pydict()
    sources: dict[str, list] = {}
    pages = errors = 0
    for uri, number, count, error in zip(
        columns["source_uri"], columns["page_number"], columns["page_count"], columns["error_type"], strict=True
    ):
        entry = sources.setdefault(uri, [None, [], False])
        if count is not None:
            entry[0] = count
        if error is None:
            pages += 1
        else:
            errors += 1
        if number is None:
            entry[2] = entry[2] or error is not None
        else:
            entry[1].append(number)
    return {"pages": pages, "error_rows": errors, "sources": sources}


@dataclass
class ProgressWriter:
    """A block writer that also sends each block's :func:`block_delta` to ``send``; picklable when
    ``send`` is (Ray ships it to the write tasks). ``send`` failing never fails the write."""

    inner: BlockWriter
    send: Callable[[dict[str, Any]], None]

    def __call__(self, block: pa.Table) -> dict[str, int]:
        counts = self.inner(block)
        try:
            self.send(block_delta(block))
        except Exception as exc:  # progress is informational
            logger.debug("progress delta dropped: %s: %s", type(exc).__name__, exc)
        return counts


class Progress:
    """Counts of one run's work as deltas arrive (thread-safe)."""

    def __init__(self, files_planned: int, clock: Callable[[], float] = time.monotonic):
        self.files_planned = files_planned
        self.clock = clock
        self.started = clock()
        self.first_block: float | None = None
        self.pages = 0
        self.error_rows = 0
        self.files_done = 0
        self.files_failed = 0
        self.pages_of_started = 0  # page counts of the files seen so far
        self.started_files: set[str] = set()
        self._open: dict[str, set[int]] = {}  # files seen but not complete: page numbers written
        self._counts: dict[str, int] = {}  # page count of each open file
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def add(self, delta: dict[str, Any]) -> None:
        """Count one :func:`block_delta`."""
        with self._lock:
            if self.first_block is None:
                self.first_block = self.clock()
            self.pages += int(delta.get("pages", 0))
            self.error_rows += int(delta.get("error_rows", 0))
            for uri, (count, numbers, failed) in delta.get("sources", {}).items():
                if uri in self._done:
                    continue  # a retried write of a finished file
                if uri not in self.started_files:
                    self.started_files.add(uri)
                    self._open[uri] = set()
                if count is not None and uri not in self._counts:
                    self._counts[uri] = count
                    self.pages_of_started += count
                self._open[uri].update(numbers)
                count = self._counts.get(uri)
                if failed or (count is not None and len(self._open[uri]) >= count):
                    self._done.add(uri)
                    self.files_done += 1
                    self.files_failed += bool(failed)
                    del self._open[uri]
                    self._counts.pop(uri, None)

    def snapshot(self) -> dict[str, float]:
        """The counters of :data:`METRICS` now."""
        with self._lock:
            now = self.clock()
            started = len(self.started_files)
            known = self.pages_of_started
            with_counts = started - sum(1 for uri in self._open if uri not in self._counts)
            mean = known / with_counts if with_counts else None
            planned = known + mean * max(0, self.files_planned - started) if mean is not None else None
            busy = now - self.first_block if self.first_block is not None else 0.0
            rate = self.pages / busy if busy > 0 else 0.0
            eta = max(0.0, (planned - self.pages - self.error_rows) / rate) if planned is not None and rate else -1.0
            return {
                "files_planned": self.files_planned,
                "files_done": self.files_done,
                "files_failed": self.files_failed,
                "pages_done": self.pages,
                "pages_planned_estimate": round(planned) if planned is not None else -1,
                "error_rows": self.error_rows,
                "pages_per_second": round(rate, 3),
                "eta_seconds": round(eta, 1),
                "elapsed_seconds": round(now - self.started, 3),
            }

    def line(self) -> str:
        """One progress line (without timestamp)."""
        s = self.snapshot()
        planned = s["pages_planned_estimate"]
        if planned >= 0:
            share = min(1.0, (s["pages_done"] + s["error_rows"]) / planned) if planned else 1.0
            pages = f"pages {s['pages_done']}/≈{planned} ({share:.0%})"
        else:
            pages = f"pages {s['pages_done']}/?"
        eta = _duration(s["eta_seconds"]) if s["eta_seconds"] >= 0 else "?"
        return (
            f"progress: files {s['files_done']}/{s['files_planned']} ({s['files_failed']} failed), {pages}, "
            f"{s['pages_per_second']:.2f} pages/s, ETA {eta}, errors {s['error_rows']}"
        )

    def summary_line(self, totals: dict[str, Any] | None = None) -> str:
        """The final line; ``totals`` (the backend's summed writer counts) override the relayed page counts."""
        s = self.snapshot()
        pages = int((totals or {}).get("pages", s["pages_done"]))
        errors = int((totals or {}).get("error_rows", s["error_rows"]))
        elapsed = s["elapsed_seconds"]
        rate = pages / elapsed if elapsed > 0 else 0.0
        return (
            f"progress done: files {s['files_done']}/{s['files_planned']} ({s['files_failed']} failed), "
            f"pages {pages}, error rows {errors} in {elapsed:.1f}s, {rate:.2f} pages/s"
        )

    def prometheus(self, labels: dict[str, str] | None = None) -> str:
        """The counters in Prometheus' text exposition format."""
        s = self.snapshot()
        label = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted((labels or {}).items()))
        label = f"{{{label}}}" if label else ""
        out = []
        for name, help_text in METRICS.items():
            out += [
                f"# HELP {METRIC_PREFIX}{name} {help_text}",
                f"# TYPE {METRIC_PREFIX}{name} gauge",
                f"{METRIC_PREFIX}{name}{label} {s[name]}",
            ]
        return "\n".join(out) + "\n"


class ProgressReporter:
    """Prints :meth:`Progress.line` every ``interval_s`` on a daemon thread and the summary at the end;
    rewrites ``metrics_file`` (atomically) at the same times. Use as a context manager around the work."""

    def __init__(
        self,
        progress: Progress,
        config: ProgressConfig,
        stream: IO[str] | None = None,
        labels: dict[str, str] | None = None,
    ):
        self.progress = progress
        self.config = config
        self.stream = stream if stream is not None else sys.stderr
        self.labels = labels or {}
        self.totals: dict[str, Any] | None = None  # set by the caller before exit, for the summary
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def prints_lines(self) -> bool:
        if self.config.lines is not None:
            return self.config.lines
        isatty = getattr(self.stream, "isatty", None)
        return not (isatty is not None and isatty())

    @property
    def active(self) -> bool:
        """Whether anything is reported (lines or a metrics file); when not, counting can be skipped."""
        return bool(self.prints_lines or self.config.metrics_file)

    def __enter__(self) -> ProgressReporter:
        if self.active:
            self._thread = threading.Thread(target=self._loop, name="index-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._emit(self.progress.summary_line(self.totals))

    def _loop(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            self._emit(self.progress.line())

    def _emit(self, line: str) -> None:
        try:
            if self.prints_lines:
                stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                print(f"{stamp} {line}", file=self.stream, flush=True)
            if self.config.metrics_file:
                path = self.config.metrics_file
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                write_local_atomic(path, self.progress.prometheus(self.labels).encode())
        except Exception as exc:  # a closed stream or a full disk must not fail the run
            logger.debug("progress not reported: %s: %s", type(exc).__name__, exc)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
