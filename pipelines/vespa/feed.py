"""Feed page documents to Vespa's ``/document/v1`` with bounded concurrency, retries and accounting.

Contract of :func:`run_operations`: every operation it sends comes back as exactly one
:class:`Outcome` whose ``state`` is

* ``acked``          Vespa answered 200: the put/remove is durable in the cluster;
* ``failed``         a non-retryable answer (e.g. 400 for a document the schema rejects), or retries
                     exhausted while Vespa answered other operations; ``status``/``message`` say why;
* ``blocked``        Vespa answered 507 (feed blocked at resource limits) for it;
* ``unavailable``    Vespa answered nothing but transient failures for ``max_outage_s`` (an outage,
                     see :class:`OutageClock`) while this operation was being retried;
* ``not_attempted``  the feed stopped (507 or outage) before this already-queued operation was sent.

After a 507 or an outage the iterator is not consumed further, so operations never pulled have no
outcome: the caller knows what it planned and counts the difference as remaining.

429, 502, 503, 504, timeouts and dropped connections are retried with exponential backoff and full
jitter, ``max_retries`` times per operation while Vespa answers other operations (a request sent
after the operation's previous attempt failed was answered); while it answers nothing at all, an operation
keeps retrying until the outage deadline instead: a cluster that is down is not a document's fault
(so a lone operation that keeps failing counts as an outage). A 507 stops the whole feed: in-flight
operations finish, nothing new is sent, and :attr:`FeedResult.blocked_message` carries Vespa's
reason; an outage longer than ``max_outage_s`` stops it likewise (:attr:`FeedResult.outage_s`).
Nothing raises for per-document problems; only programming errors escape.

The HTTP/2 client is pyvespa's async session, with pyvespa's own retry layer switched off
(``NO_RETRY``) so the policy above is the only one and 507/400 are seen as they happen.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vespa.retries import NO_RETRY

from pipelines.redaction import redact_text
from pipelines.vespa.client import VespaEndpoint

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
FEED_BLOCKED_STATUS = 507


@dataclass
class FeedSettings:
    """How hard to push. Hydra group ``vespa.feed``."""

    max_in_flight: int = 64  # concurrent requests (HTTP/2 streams) per feeding process
    connections: int = 1
    request_timeout_s: float = 60.0
    max_retries: int = 10  # per operation, for retryable answers while Vespa answers other operations
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # gzip bodies over 1 KiB. Off by default: pyvespa compresses at the highest level on the event-loop
    # thread, which serializes a feed of ~100 KB pages; turn it on when bandwidth, not CPU, is scarce.
    compress: bool = False
    # How long a feed waits through a Vespa outage: consecutive seconds in which every request failed
    # transiently (timeouts, dropped connections, 429/502/503/504), across all operations, not per
    # operation. Past it the feed gives up; what it did not get acknowledged stays for the next feed
    # (the index job and jobs.feed exit 6). Requests already in flight finish first, so a feed ends
    # within max_outage_s plus one request_timeout_s of the outage's start.
    max_outage_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            msg = f"vespa.feed.max_in_flight must be >= 1, got {self.max_in_flight}"
            raise ValueError(msg)
        if self.max_retries < 0 or self.request_timeout_s <= 0:
            msg = "vespa.feed.max_retries must be >= 0 and vespa.feed.request_timeout_s > 0"
            raise ValueError(msg)
        if not self.max_outage_s > 0:
            msg = f"vespa.feed.max_outage_s must be > 0 (seconds), got {self.max_outage_s}"
            raise ValueError(msg)


@dataclass
class Operation:
    """A put (``fields`` given) or remove (``fields`` None) of one document, plus accounting metadata."""

    doc_id: str  # Vespa local document id (our page_id)
    fields: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "put" if self.fields is not None else "remove"


@dataclass
class Outcome:
    doc_id: str
    kind: str
    state: str  # acked | failed | blocked | unavailable | not_attempted
    status: int | None = None
    attempts: int = 0
    message: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeedResult:
    outcomes: list[Outcome]
    seconds: float
    blocked_message: str | None = None
    outage_s: float | None = None  # set when the feed gave up on an outage: how long Vespa had been down

    def count(self, state: str, kind: str | None = None) -> int:
        return sum(1 for o in self.outcomes if o.state == state and (kind is None or o.kind == kind))

    @property
    def blocked(self) -> bool:
        return self.blocked_message is not None

    @property
    def unavailable(self) -> bool:
        return self.outage_s is not None


@dataclass
class OutageClock:
    """The outage deadline of a feed (``vespa.feed.max_outage_s``), shared by all its operations.

    An outage starts with the first attempt that fails transiently (timeout, dropped connection,
    429/502/503/504), and ends when Vespa answers (200, 400, 507: anything not transient) a request
    sent after it started; answers to requests sent before it (still in flight when Vespa went down)
    do not end it. Once it has lasted ``max_outage_s`` the clock has ``expired`` and the feed gives up.
    Times are ``time.monotonic()`` at which requests were sent.

    ``probe``: this run already waited out an outage; the first failure before any answer gives up at
    once (one round of requests finds out whether Vespa is back). ``peer_gave_up`` is asked when an
    outage starts: True when another process feeding the same run already gave up, so this one does too.
    """

    max_outage_s: float
    probe: bool = False
    peer_gave_up: Callable[[], bool] | None = None
    last_answer: float = field(default_factory=time.monotonic)  # when the latest answered request was sent
    down_since: float | None = None
    expired: bool = False

    def answered(self, sent: float) -> None:
        """Count an answer to a request sent at ``sent``."""
        self.last_answer, self.probe = max(self.last_answer, sent), False
        if self.down_since is not None and sent >= self.down_since:
            self.down_since = None

    def failed(self, sent: float) -> None:
        """Count a transient failure of a request sent at ``sent``."""
        if self.down_since is None:
            self.down_since = max(sent, self.last_answer)
            if self.probe or (self.peer_gave_up is not None and self.peer_gave_up()):
                self.expired = True
        if self.down_for() >= self.max_outage_s:
            self.expired = True

    def answers_others(self, since: float) -> bool:
        """Whether Vespa answered a request sent after ``since``: then failures meanwhile are no outage."""
        return self.last_answer > since

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def remaining(self) -> float:
        """Seconds until the deadline of the current outage (``max_outage_s`` when Vespa is up)."""
        return max(0.0, self.max_outage_s - self.down_for())


def backoff_seconds(attempt: int, settings: FeedSettings) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, initial * 2**attempt)]."""
    return random.uniform(0, min(settings.backoff_max_s, settings.backoff_initial_s * 2 ** min(attempt, 32)))


def is_transient(status: int | None) -> bool:
    """Worth retrying: no answer at all (timeout, reset, dropped connection) or a throttling/unavailable status."""
    return status is None or status in RETRYABLE_STATUS


def response_message(json_body: Any) -> str:
    """Vespa's error message from a /document/v1 answer body, cut to 500 characters."""
    if isinstance(json_body, dict):
        return str(json_body.get("message") or json_body.get("Exception") or json_body)[:500]
    return str(json_body)[:500]


async def _feed(
    operations: Iterable[Operation], endpoint: VespaEndpoint, settings: FeedSettings, clock: OutageClock, on_outcome
) -> FeedResult:
    app = endpoint.connect()
    secrets = endpoint.secrets()
    stop = asyncio.Event()
    blocked: list[str] = []
    outcomes: list[Outcome] = []
    started = time.perf_counter()

    async def send(session, op: Operation) -> Outcome:
        attempt = 0
        status: int | None = None
        message = ""
        previous: float | None = None  # when this operation's previous attempt failed
        while True:
            if stop.is_set():
                # Another request hit 507 or the outage deadline: do not add load; the operation stays
                # for the resumed run.
                state = ("blocked" if blocked else "unavailable") if attempt else "not_attempted"
                return Outcome(op.doc_id, op.kind, state, status, attempt, message, op.meta)
            sent = time.monotonic()
            try:
                if op.fields is not None:
                    response = await session.feed_data_point(
                        schema=endpoint.schema, data_id=op.doc_id, fields=op.fields, namespace=endpoint.namespace
                    )
                else:
                    response = await session.delete_data(
                        schema=endpoint.schema, data_id=op.doc_id, namespace=endpoint.namespace
                    )
                status, message = response.status_code, response_message(response.json)
            except Exception as exc:  # timeouts, resets, dropped connections: all transport-level
                status, message = None, f"{type(exc).__name__}: {exc}"
            attempt += 1
            message = redact_text(message, secrets)
            if not is_transient(status):
                clock.answered(sent)
            if status == 200:
                return Outcome(op.doc_id, op.kind, "acked", status, attempt, "", op.meta)
            if status == FEED_BLOCKED_STATUS:
                if not stop.is_set():
                    blocked.append(message)
                    stop.set()
                return Outcome(op.doc_id, op.kind, "blocked", status, attempt, message, op.meta)
            if not is_transient(status):
                return Outcome(op.doc_id, op.kind, "failed", status, attempt, message, op.meta)
            clock.failed(sent)
            if clock.expired:
                stop.set()
                message = f"Vespa answered nothing for {clock.down_for():.1f}s (vespa.feed.max_outage_s): {message}"
                return Outcome(op.doc_id, op.kind, "unavailable", status, attempt, message, op.meta)
            failed_at = time.monotonic()
            if attempt > settings.max_retries and clock.answers_others(previous if previous is not None else sent):
                # Vespa answered requests sent since this one's previous attempt failed: its failures are its own.
                message = f"gave up after {attempt} attempts: {message}"
                return Outcome(op.doc_id, op.kind, "failed", status, attempt, message, op.meta)
            previous = failed_at
            delay = min(backoff_seconds(attempt - 1, settings), clock.remaining())
            with contextlib.suppress(TimeoutError):  # woken early when the feed stops
                await asyncio.wait_for(stop.wait(), timeout=delay)

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    async with app.asyncio(
        connections=settings.connections,
        timeout=settings.request_timeout_s,
        compress="auto" if settings.compress else False,
        docv1_retry_policy=NO_RETRY,
    ) as session:
        pending: set[asyncio.Task] = set()
        iterator = iter(operations)
        for op in iterator:
            if stop.is_set():
                break  # blocked: later operations are never built; callers count them as remaining
            pending.add(asyncio.create_task(send(session, op)))
            if len(pending) >= settings.max_in_flight:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    record(task.result())
        if pending:
            for task in asyncio.as_completed(pending):
                record(await task)
    outage_s = round(clock.down_for(), 3) if clock.expired and not blocked else None
    return FeedResult(outcomes, time.perf_counter() - started, blocked[0] if blocked else None, outage_s)


def run_operations(
    operations: Iterable[Operation],
    endpoint: VespaEndpoint,
    settings: FeedSettings,
    on_outcome=None,
    clock: OutageClock | None = None,
) -> FeedResult:
    """Send ``operations``; blocks until each sent one has an :class:`Outcome` (see the module docstring).

    ``on_outcome`` is called for each outcome as it completes (e.g. to checkpoint acks). ``clock`` is
    the outage deadline (default: a fresh one of ``settings.max_outage_s``). Safe to call from code
    that already runs an event loop (the feed then runs on its own thread).
    """
    clock = clock if clock is not None else OutageClock(settings.max_outage_s)
    coroutine = _feed(operations, endpoint, settings, clock, on_outcome)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
