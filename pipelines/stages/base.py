"""The stage contract.

A stage is a small dataclass whose fields are its Hydra-settable knobs. It consumes a batch of page
records (a ``pyarrow.Table`` in :data:`pipelines.schema.PAGE_SCHEMA`) and returns one, adding or
replacing only the columns it owns. It never imports Ray: how a stage is scheduled (tasks or an
actor pool, CPUs/GPUs, batch size) is decided in :mod:`pipelines.backends.ray_data`.

Lifecycle: the stage object is pickled to workers; ``setup()`` runs once per worker (actors: once
per actor) before the first batch, and is where heavy things (models) are loaded. ``process_batch``
must be safe to call many times. Calling a stage yields its output tables (see ``process_stream``);
every backend calls stages that way, so :meth:`Stage.__call__` is where documents are isolated.

Bad *data* becomes an error row (see :func:`error_fields`). A stage turns the bad data it knows into
error rows with a specific reason; any other exception raised while it processes a batch is still
one document's problem unless :func:`fails_run` says otherwise: ``__call__`` then processes the batch
again one document (fan-out stages) or one row at a time, and the rows that still fail become
``<stage>_failed`` error rows (the exception's type, message and where it was raised), so one file can
never stop a run. What fails the run: :class:`PipelineFailure` (an inconsistency in our own code, config
or models that a stage detects), a model that cannot load (``setup()`` runs outside the guard), and
the environment: out of memory, disk or file handles, a lost Ray cluster, a failed accelerator. A bug
that every document trips over shows as every document failing, which ``max_error_rate`` turns into
the job's exit status 4.
"""

from __future__ import annotations

import errno
import logging
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from pipelines import schema
from pipelines.errors import ConfigError
from pipelines.redaction import redact_text

logger = logging.getLogger(__name__)

#: ``errno`` of an ``OSError`` that says the machine failed, not the document: out of disk or quota, memory,
#: file handles or processes, a read-only or failing disk.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.EROFS, errno.EIO}
)
#: Exception classes (by defining package and name, so this module imports neither) of a failed accelerator.
_DEVICE_FAILURES = frozenset({("torch", "OutOfMemoryError"), ("torch", "AcceleratorError")})
#: Columns an error row made from a failed row keeps: what the index's errors table and the ledger need.
_IDENTITY = ("page_id", "doc_id", "source_uri", "page_number", "page_count", "title", "width_pt", "height_pt")


class PipelineFailure(RuntimeError):
    """Raised by a stage for a failure that is not one document's (our code, config or models disagree):
    it fails the run instead of becoming error rows."""


@dataclass
class Stage:
    """Base class of all pipeline stages."""

    name: ClassVar[str] = "stage"
    #: True when the stage holds expensive state and should run on a long-lived actor.
    stateful: ClassVar[bool] = False
    #: True when the stage turns one input row into any number of output rows.
    changes_row_count: ClassVar[bool] = False

    def setup(self) -> None:
        """Load heavy resources. Called before every batch (outside the per-document guard, so a model that
        cannot load fails the run): it must do its work once and be a cheap no-op afterwards."""

    def process_batch(self, batch: pa.Table) -> pa.Table:
        """Transform one batch of page records. Must be overridden (or :meth:`process_stream`)."""
        raise NotImplementedError

    def process_stream(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Yield the output of one input batch in pieces; fan-out stages override this so a long
        document streams downstream window by window instead of arriving as one huge block."""
        yield self.process_batch(batch)

    def apply(self, batch: pa.Table) -> pa.Table:
        """All output of one input batch as a single table (for tests and interactive use)."""
        return pa.concat_tables([schema.PAGE_SCHEMA.empty_table(), *self(batch)])

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        """The stage's output tables for ``batch``, with every document isolated (see the module docstring).

        A fan-out stage processes its input rows (one document each) one at a time: when one raises, the
        pages it has not yielded yet become error rows (or, before any page, one document-level row). A
        row-for-row stage's batch that raises is processed again row by row (a stage yields a row-for-row
        batch's output only once it has all of it, so nothing is yielded twice).
        """
        batch = schema.conform(batch)
        self.setup()
        if self.changes_row_count:
            for i in range(batch.num_rows):
                yield from self._isolated_document(batch.slice(i, 1))
        else:
            yield from self._isolated_rows(batch)

    def _isolated_document(self, source: pa.Table) -> Iterator[pa.Table]:
        emitted: set[int | None] = set()
        known: dict = {}  # identity of the document once a page row says it (doc_id, page_count, title)
        try:
            for out in self.process_stream(source):
                if not out.num_rows:
                    continue
                out = schema.conform(out)
                emitted.update(out.column("page_number").to_pylist())
                if not known:
                    for row in out.select(["doc_id", "page_count", "title"]).to_pylist():
                        if row["page_count"] is not None:
                            known = row
                            break
                yield out
        except Exception as exc:
            if fails_run(exc):
                raise
            fields = exception_fields(self.name, f"{self.name}_failed", exc)
            uri = source.column("source_uri")[0].as_py()
            logger.warning("%s: %s: %s", self.name, uri, fields["error_message"], exc_info=exc)
            if None in emitted:  # the document already has its document-level error row
                return
            if known:
                pages = range(1, known["page_count"] + 1)
                rows = [{"source_uri": uri, **known, "page_number": n, **fields} for n in pages if n not in emitted]
            else:
                rows = [{"source_uri": uri, **fields}]
            if rows:
                yield schema.rows_to_table(rows)

    def _isolated_rows(self, batch: pa.Table) -> Iterator[pa.Table]:
        try:
            # Whole before yielding: a batch that fails part-way is redone row by row, never emitted twice.
            outputs = [schema.conform(out) for out in self.process_stream(batch) if out.num_rows]
        except Exception as exc:
            if fails_run(exc):
                raise
            if batch.num_rows > 1:
                for i in range(batch.num_rows):
                    yield from self._isolated_rows(batch.slice(i, 1))
                return
            fields = exception_fields(self.name, f"{self.name}_failed", exc)
            [row] = batch.select([*_IDENTITY, "error_stage", "error_type", "error_message"]).to_pylist()
            logger.warning("%s: %s page %s: %s", self.name, row["source_uri"], row["page_number"],
                           fields["error_message"], exc_info=exc)  # fmt: skip
            if row["error_type"] is None:
                row.update(fields)
            yield schema.rows_to_table([row])
            return
        yield from outputs


def fails_run(exc: BaseException) -> bool:
    """Whether ``exc`` fails the run rather than the document being processed (see the module docstring):
    anything but an ``Exception`` (interrupts, exits), :class:`PipelineFailure`, a ``ConfigError``, running out
    of memory, an ``OSError`` with an :data:`ENVIRONMENT_ERRNOS` errno, any Ray error (its cluster is lost), and
    a failed accelerator (torch's ``OutOfMemoryError``, ``AcceleratorError``)."""
    if not isinstance(exc, Exception) or isinstance(exc, MemoryError | PipelineFailure | ConfigError):
        return True
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return True
    for cls in type(exc).__mro__:
        package = cls.__module__.partition(".")[0]
        if package == "ray" or (package, cls.__name__) in _DEVICE_FAILURES:
            return True
    return False


def error_fields(stage: str, error_type: str, message: str) -> dict[str, str]:
    """Error columns for a record that failed in ``stage``; messages are redacted (they are stored in the index and
    its reports) and capped to keep rows small."""
    return {"error_stage": stage, "error_type": error_type, "error_message": redact_text(message)[:2000]}


def exception_fields(stage: str, error_type: str, exc: BaseException, context: str = "") -> dict[str, str]:
    """:func:`error_fields` for an exception: ``context``, its type, message and the line that raised it (file:line
    in function), so an error row of a bug says where to look."""
    message = f"{context}{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        where = frames[-1]
        message += f" (at {os.path.basename(where.filename)}:{where.lineno} in {where.name})"
    return error_fields(stage, error_type, message)
