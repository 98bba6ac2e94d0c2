"""The stage contract.

A stage is a small dataclass whose fields are its Hydra-settable knobs. It consumes a batch of page
records (a ``pyarrow.Table`` in :data:`pipelines.schema.PAGE_SCHEMA`) and returns one, adding or
replacing only the columns it owns. It never imports Ray: how a stage is scheduled (tasks or an
actor pool, CPUs/GPUs, batch size) is decided in :mod:`pipelines.backends.ray_data`.

Lifecycle: the stage object is pickled to workers; ``setup()`` runs once per worker (actors: once
per actor) before the first batch, and is where heavy things (models) are loaded. ``process_batch``
must be safe to call many times. Calling a stage yields its output tables (see ``process_stream``).
Bad *data* becomes an error row (see :func:`error_fields`); anything else (bugs, misconfiguration,
out-of-memory) raises and fails the run loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa

from pipelines import schema
from pipelines.redaction import redact_text


@dataclass
class Stage:
    """Base class of all pipeline stages."""

    name: ClassVar[str] = "stage"
    #: True when the stage holds expensive state and should run on a long-lived actor.
    stateful: ClassVar[bool] = False
    #: True when the stage turns one input row into any number of output rows.
    changes_row_count: ClassVar[bool] = False

    def setup(self) -> None:
        """Load heavy resources. Called once per worker before the first batch."""

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
        for out in self.process_stream(schema.conform(batch)):
            if out.num_rows:
                yield schema.conform(out)


def error_fields(stage: str, error_type: str, message: str) -> dict[str, str]:
    """Error columns for a record that failed in ``stage``; messages are redacted (they are stored in the index and
    its reports) and capped to keep rows small."""
    return {"error_stage": stage, "error_type": error_type, "error_message": redact_text(message)[:2000]}
