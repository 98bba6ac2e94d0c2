"""One writer per index: an expiring lease object, renewed by a heartbeat, taken with conditional writes.

The lease is ``<index>/lease.json``::

    {"run_id": ..., "host": ..., "pid": ..., "pid_started": ..., "acquired_at": ..., "renewed_at": ...,
     "expires_at": ..., "ttl_s": ...}

A run **acquires** it before it changes anything in the index: it creates the object if there is none,
or replaces it when its holder is gone: the lease expired (no heartbeat for ``ttl_s``), or the holder
is a process of this host that no longer runs (a killed local run is taken over at once). A live holder
makes the run fail fast with :class:`IndexLocked`, saying who holds the index and until when. While the
run works, a heartbeat thread renews the lease every ``ttl_s / 4``; a renewal that finds the object
changed means another run took over (this one stalled past its expiry).
The lease is deleted when the run ends, whatever the outcome.

**Fencing.** A run that stalls past its expiry (SIGSTOP, a frozen VM, a slow request) and wakes up after
another run took the index over must never write again. The lease is the index's fence
(:class:`~pipelines.index.storage.Fence`): the storage layer runs every irreversible write of the
driver (ledger rows, run markers, compaction rewrites and deletes, ledger snapshots, overwrite
clearing, the config and report) inside :meth:`Lease.fenced`, which reads the lease object right
before the write and raises :class:`LeaseLost` unless it still names this run and has not expired.
On local filesystems the write runs under the lease's ``flock``, which every takeover needs too, so
no takeover can fall between the check and the write (compare-and-swap). Object stores have no
multi-object transaction: there the check is one ``GET`` immediately before each write, and expiry
is judged on the clock of the machine that writes, so only a stall inside that one request can slip
through. Vespa deletes are fenced the same way (``PartStore.check_fence``); :meth:`Lease.check` is the check
without I/O, run once before the commit starts.

Every step is a compare-and-swap on the object, so of several runs racing for a free or stale lease
exactly one wins:

- **S3** (and S3-compatible stores with conditional writes: MinIO, recent Ceph): ``PutObject`` with
  ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to renew or take over, ``DeleteObject`` with
  ``If-Match`` to release;
- **local filesystems**: read, compare and write under an exclusive ``flock`` on ``lease.json.lock``;
- **other fsspec stores**: a plain write, read back after a short settle delay. Two runs starting within
  that delay of each other could both pass; the expiry still bounds any stale lease.

Clocks: expiry compares the holder's ``expires_at`` with this machine's clock, so ``ttl_s`` must exceed
the clock skew between the machines that run jobs (seconds with NTP; the default is 5 minutes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines import io

logger = logging.getLogger(__name__)

LEASE_FILE = "lease.json"


@dataclass
class LeaseConfig:
    """The ``lease`` config node (conf/index.yaml)."""

    #: Seconds without a heartbeat after which another run may take the index over.
    ttl_s: float = 300.0
    #: Seconds to wait for a held lease to be released or to expire before failing; 0 = fail at once.
    wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.ttl_s <= 0:
            msg = f"lease.ttl_s must be > 0 seconds, got {self.ttl_s}"
            raise ValueError(msg)
        if self.wait_s < 0:
            msg = f"lease.wait_s must be >= 0 seconds, got {self.wait_s}"
            raise ValueError(msg)


class IndexLocked(RuntimeError):
    """Another run holds the index's lease; the message says which run, where, and until when."""


class LeaseLost(RuntimeError):
    """This run no longer holds the index (another run took the lease over after this one stalled past its
    expiry, or the run already released it): it must not write to the index again."""


class VersionedObject(Protocol):
    """One small object with compare-and-swap writes. ``version`` identifies what was read or written."""

    def read(self) -> tuple[bytes, str] | None:
        """``(data, version)``, or None when there is no object."""

    def create(self, data: bytes) -> str | None:
        """Write ``data`` if there is no object; its version, or None when one exists."""

    def replace(self, data: bytes, version: str) -> str | None:
        """Write ``data`` if the object is still at ``version``; the new version, or None otherwise."""

    def delete(self, version: str) -> bool:
        """Delete the object if it is still at ``version``."""

    def holding(self) -> contextlib.AbstractContextManager[tuple[bytes, str] | None]:
        """The object as :meth:`read` gives it, kept from changing until the block ends where the store
        can (a local lock that every write takes); elsewhere a read immediately before the block."""


def versioned_object(fs, path: str) -> VersionedObject:
    """The compare-and-swap implementation for ``fs`` (see the module docstring)."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & {"s3", "s3a"}:
        return S3Object(fs, path)
    if protocols & {"file", "local"}:
        return LocalObject(path)
    return ReadBackObject(fs, path)


class S3Object:
    """Conditional S3 requests through s3fs (``If-None-Match``/``If-Match``)."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self.bucket, self.key, _ = fs.split_path(path)

    def read(self) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            body = response["Body"]
            try:
                return await body.read(), response["ETag"]
            finally:
                body.close()

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def create(self, data: bytes) -> str | None:
        try:
            return self.fs.pipe_file(self.path, data, mode="create")["ETag"]
        except FileExistsError:
            return None

    def replace(self, data: bytes, version: str) -> str | None:
        try:
            return self.fs.pipe_file(self.path, data, IfMatch=version)["ETag"]
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise

    def delete(self, version: str) -> bool:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        self.fs.invalidate_cache(self.path)
        return True

    @contextlib.contextmanager
    def holding(self):
        yield io.with_retries(self.read, f"reading the lease {self.path}")


def _precondition_failed(exc: BaseException) -> bool:
    """s3fs raises a plain OSError for HTTP 412; the botocore error it wraps names the condition."""
    cause = exc.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or "pre-conditions" in str(exc)


class LocalObject:
    """A local file; every write holds an exclusive ``flock`` on ``<path>.lock`` while it compares."""

    def __init__(self, path: str):
        self.path = path

    @contextlib.contextmanager
    def _locked(self):
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return data, _digest(data)

    def _write(self, data: bytes) -> str:
        io.write_local_atomic(self.path, data)
        return _digest(data)

    def read(self) -> tuple[bytes, str] | None:
        return self._read()  # writes are atomic renames: no lock needed to read a whole object

    def create(self, data: bytes) -> str | None:
        with self._locked():
            return None if self._read() is not None else self._write(data)

    def replace(self, data: bytes, version: str) -> str | None:
        with self._locked():
            current = self._read()
            return self._write(data) if current is not None and current[1] == version else None

    def delete(self, version: str) -> bool:
        with self._locked():
            current = self._read()
            if current is None or current[1] != version:
                return False
            os.remove(self.path)
            return True

    @contextlib.contextmanager
    def holding(self):
        with self._locked():
            yield self._read()


class ReadBackObject:
    """Stores without conditional writes: write, wait ``settle_s``, and check the object is still ours."""

    def __init__(self, fs, path: str, settle_s: float = 1.0):
        self.fs, self.path, self.settle_s = fs, path, settle_s

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, _digest(data)

    def _write_and_check(self, data: bytes) -> str | None:
        self.fs.pipe_file(self.path, data)
        time.sleep(self.settle_s)
        current = self.read()
        return current[1] if current is not None and current[0] == data else None

    def create(self, data: bytes) -> str | None:
        return None if self.read() is not None else self._write_and_check(data)

    def replace(self, data: bytes, version: str) -> str | None:
        current = self.read()
        return self._write_and_check(data) if current is not None and current[1] == version else None

    def delete(self, version: str) -> bool:
        current = self.read()
        if current is None or current[1] != version:
            return False
        self.fs.rm(self.path)
        return True

    @contextlib.contextmanager
    def holding(self):
        yield io.with_retries(self.read, f"reading the lease {self.path}")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _process_started(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch); None when it does not run (or is a zombie
    nobody reaped), -1 when it runs but its start time cannot be read."""
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return -1.0
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return -1.0


def holder_gone(record: dict[str, Any], now: float) -> str | None:
    """Why the lease ``record`` no longer protects its holder's run (``"expired"``, ``"holder exited"``),
    or None while it does."""
    if now >= float(record.get("expires_at", 0)):
        return "expired"
    if record.get("host") == socket.gethostname() and record.get("pid"):
        started = _process_started(int(record["pid"]))
        if started is None:
            return "holder exited"
        recorded = record.get("pid_started")
        if started >= 0 and recorded is not None and abs(started - float(recorded)) > 1.0:
            return "holder exited"  # the pid was reused by another process
    return None


def describe(record: dict[str, Any], location: str) -> str:
    """The :class:`IndexLocked` message for a live holder."""

    def at(key: str) -> str:
        value = record.get(key)
        return dt.datetime.fromtimestamp(float(value), dt.UTC).isoformat(timespec="seconds") if value else "?"

    return (
        f"index {location!r} is being written by another run: run {record.get('run_id')} on "
        f"{record.get('host')} (pid {record.get('pid')}), started {at('acquired_at')}, last heartbeat "
        f"{at('renewed_at')}. Run one writer per index at a time; if that run is dead, its lease expires "
        f"at {at('expires_at')} (lease.ttl_s={record.get('ttl_s')}), or delete {LEASE_FILE} in the index "
        f"once you are sure. lease.wait_s=<seconds> waits for it instead of failing."
    )


class Lease:
    """A held lease: renewed by a heartbeat thread until :meth:`release`. Use :func:`acquire`."""

    def __init__(
        self,
        store: VersionedObject,
        record: dict[str, Any],
        version: str,
        location: str,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.record = record
        self.version = version
        self.location = location
        self.clock = clock
        self.lost: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._heartbeat, name="index-lease", daemon=True)
        self._thread.start()

    @property
    def ttl_s(self) -> float:
        return float(self.record["ttl_s"])

    def renew(self) -> bool:
        """Extend the lease by ``ttl_s`` from now; False (and :attr:`lost` set) when another run took it."""
        with self._lock:
            if self.lost:
                return False
            now = self.clock()
            record = {**self.record, "renewed_at": now, "expires_at": now + self.ttl_s}
            version = self.store.replace(_encode(record), self.version)
            if version is None:
                current = self.store.read()
                mine = current is not None and _decode(current[0]).get("run_id") == self.record["run_id"]
                if mine:  # an earlier renewal of ours went through but its answer was lost
                    self.record, self.version = _decode(current[0]), current[1]
                    return True
                self.lost = "another run replaced the lease"
                logger.error("lease on %s lost: %s", self.location, self.lost)
                return False
            self.record, self.version = record, version
            return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not self.renew():
                    return
            except Exception as exc:  # a transient store error: the next beat tries again
                logger.warning("lease on %s not renewed (%s: %s); retrying", self.location, type(exc).__name__, exc)

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this run still holds the index, by what this process knows (no
        I/O): the heartbeat found the lease replaced, or it could not renew it before its expiry."""
        if not self.lost and self.clock() >= float(self.record["expires_at"]):
            self.lost = "the lease expired before it could be renewed"
        if self.lost:
            msg = (
                f"this run ({self.record['run_id']}) no longer holds the lease on {self.location!r}: {self.lost}. "
                f"It writes nothing more to the index; the run holding the index now (or the next run) commits "
                f"the documents it finished."
            )
            raise LeaseLost(msg)

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Run the block (one irreversible write) only while this run holds the index: the lease object is
        read right before it and must still name this run, unexpired; on local filesystems it cannot change
        until the block ends (see the module docstring). Raises :class:`LeaseLost` otherwise."""
        self.check()
        with self.store.holding() as current:
            record = _decode(current[0]) if current is not None else {}
            if record.get("run_id") != self.record["run_id"]:
                self.lost = "another run took the lease over" if record else "the lease is gone"
            elif self.clock() >= float(record.get("expires_at", 0)):
                self.lost = "the lease expired before it could be renewed"
            self.check()
            yield

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours (never raises)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self.lost == "released":
                return
            try:  # also after a lost lease: an expired one nobody took over is still ours to delete (If-Match)
                io.with_retries(lambda: self.store.delete(self.version), f"releasing the lease on {self.location}")
            except Exception as exc:  # the lease then expires on its own
                logger.warning("lease on %s not released (%s: %s)", self.location, type(exc).__name__, exc)
            self.lost = "released"


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=1, sort_keys=True).encode()


def _decode(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError:
        return {}  # a torn or foreign object: treated as expired
    return record if isinstance(record, dict) else {}


def lease_path(root: str) -> str:
    return posixpath.join(root, LEASE_FILE)


def ensure_free(fs, root: str, location: str, clock: Callable[[], float] = time.time) -> None:
    """Raise :class:`IndexLocked` when a live run holds the index (a read-only check; :func:`acquire`
    is what takes the lease)."""
    current = io.with_retries(versioned_object(fs, lease_path(root)).read, f"reading the lease on {location}")
    if current is not None:
        record = _decode(current[0])
        if holder_gone(record, clock()) is None:
            raise IndexLocked(describe(record, location))


def acquire(
    fs,
    root: str,
    location: str,
    run_id: str,
    config: LeaseConfig,
    clock: Callable[[], float] = time.time,
    poll_s: float = 5.0,
) -> Lease:
    """Take the index's lease for ``run_id`` (see the module docstring) and start its heartbeat.

    Raises :class:`IndexLocked` when a live run holds it for longer than ``config.wait_s``.
    """
    store = versioned_object(fs, lease_path(root))
    deadline = clock() + config.wait_s
    what = f"taking the lease on {location}"
    while True:
        now = clock()
        record = {
            "run_id": run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_started": _process_started(os.getpid()),
            "acquired_at": now,
            "renewed_at": now,
            "expires_at": now + config.ttl_s,
            "ttl_s": config.ttl_s,
        }
        current = io.with_retries(store.read, what)
        if current is None:
            version = io.with_retries(functools.partial(store.create, _encode(record)), what)
        else:
            previous = _decode(current[0])
            if previous.get("run_id") == run_id:  # our own write, whose answer was lost and retried
                return Lease(store, previous, current[1], location, clock)
            reason = holder_gone(previous, now)
            if reason is None:
                if now >= deadline:
                    raise IndexLocked(describe(previous, location))
                time.sleep(min(poll_s, config.ttl_s / 4, max(0.01, deadline - now)))
                continue
            logger.warning(
                "taking over the lease on %s from run %s on %s (pid %s): %s",
                location, previous.get("run_id"), previous.get("host"), previous.get("pid"), reason,
            )  # fmt: skip
            version = io.with_retries(functools.partial(store.replace, _encode(record), current[1]), what)
        if version is not None:
            return Lease(store, record, version, location, clock)
        # Another run changed the object between our read and our write: look again.
