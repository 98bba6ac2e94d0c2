"""Reading and listing through fsspec: local paths, ``file://`` and any fsspec URL (``s3://`` …).

Object stores fail transiently (throttling, 5xx, dropped connections). s3fs and botocore already
retry a few of those; :func:`with_retries` adds a slower, jittered layer on top so a burst of
``SlowDown`` does not turn a good file into an error row. Missing buckets and denied access are not
transient: they raise at once with a message that says what to check.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, NamedTuple, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Error codes and phrases object stores use for "try again later".
_TRANSIENT_MARKERS = (
    "SlowDown",
    "Throttl",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
    "reduce your request rate",
    "(500)",
    "(502)",
    "(503)",
    "(504)",
    "Connection reset",
    "Server disconnected",
    "timed out",
)
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.EBUSY}


class SourceFile(NamedTuple):
    """One listed input object. ``version`` changes whenever the object's content may have changed
    (the object store's ETag, else size and modification time); it is how reruns skip unchanged files
    without reading them."""

    uri: str
    size: int
    version: str


def filesystem_for(location: str, storage_options: Mapping[str, Any] | None = None):
    """Return ``(fs, path)`` for a location, with the protocol stripped from ``path``."""
    fs, path = fsspec.core.url_to_fs(location, **dict(storage_options or {}))
    return fs, path


def is_transient(exc: BaseException) -> bool:
    """True for storage errors worth retrying (throttling, 5xx, timeouts, dropped connections)."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def with_retries(action: Callable[[], T], what: str, attempts: int = 6, base_s: float = 0.2, max_s: float = 10.0) -> T:
    """Run ``action``; retry transient storage errors with exponential backoff and full jitter.

    Non-transient errors (and the last transient one) propagate unchanged.
    """
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = random.uniform(0, min(max_s, base_s * 2**attempt))
            logger.warning("%s: transient storage error (%s), retry %d in %.2fs", what, exc, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def storage_error(location: str, exc: BaseException, setting: str) -> OSError:
    """A clear, non-retryable error for a location that cannot be used (missing, denied)."""
    if isinstance(exc, PermissionError):
        msg = (
            f"access denied to {location!r}: check the credentials ({setting}.storage_options, AWS_PROFILE or "
            f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the bucket policy ({exc})"
        )
        return PermissionError(msg)
    msg = f"location does not exist: {location!r} (check {setting}.location and, for S3, the bucket name) ({exc})"
    return FileNotFoundError(msg)


def location_uri(location: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """``location`` in the URI form :func:`list_inputs` gives its files (``file:///abs``, ``s3://b/p``)."""
    fs, path = filesystem_for(location, storage_options)
    return fs.unstrip_protocol(path.rstrip("/"))


#: Protocols whose first path component is a bucket that writers would create on the fly.
BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss"})


def require_bucket(location: str, storage_options: Mapping[str, Any] | None, setting: str) -> None:
    """Fail fast when ``location`` is in an object store bucket that does not exist or is not ours.

    s3fs (like other object-store filesystems) creates a missing bucket on the first write, so a typo in
    an output bucket would silently create a new bucket; this check refuses instead.
    """
    fs, path = filesystem_for(location, storage_options)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & BUCKET_PROTOCOLS:
        return
    bucket = path.strip("/").split("/", 1)[0]
    try:
        exists = with_retries(lambda: fs.exists(bucket), f"checking {location}")
    except (PermissionError, FileNotFoundError) as exc:
        raise storage_error(location, exc, setting) from exc
    if not exists:
        raise storage_error(location, FileNotFoundError(f"bucket {bucket!r} not found"), setting)


def list_inputs(
    location: str,
    suffixes: tuple[str, ...] = (".pdf",),
    glob: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[SourceFile], list[str]]:
    """List the input files under ``location``: ``([SourceFile], [skipped_uri])``, both sorted by URI.

    ``location`` may be a single file, a directory/prefix (searched recursively) or, with ``glob``,
    a directory plus a glob pattern relative to it. Suffixes match case-insensitively; files that do
    not match are returned as skipped so jobs can account for every file under the location. A single
    file named explicitly is taken whatever its suffix. URIs keep their protocol (``file://…``,
    ``s3://…``) so workers can reopen them with :func:`read_bytes`.

    Raises ``FileNotFoundError`` when the location (or bucket) does not exist and ``PermissionError``
    when access is denied, both with a message naming the setting to fix; transient errors are retried.
    """
    fs, path = filesystem_for(location, storage_options)
    try:
        if glob:
            pattern = posixpath.join(path.rstrip("/"), glob)
            matches = with_retries(lambda: fs.glob(pattern, detail=True), f"listing {location}")
            infos = {p: info for p, info in matches.items() if info.get("type") == "file"}
        elif not with_retries(lambda: fs.exists(path), f"listing {location}"):
            msg = f"input location does not exist: {location!r} (set source.location to a PDF file or directory)"
            raise FileNotFoundError(msg)
        elif with_retries(lambda: fs.isfile(path), f"listing {location}"):
            info = with_retries(lambda: fs.info(path), f"listing {location}")
            return [_source_file(fs, path, info)], []
        else:
            infos = with_retries(lambda: fs.find(path, detail=True), f"listing {location}")
    except PermissionError as exc:
        raise storage_error(location, exc, "source") from exc
    except FileNotFoundError as exc:
        if "source.location" in str(exc):
            raise
        raise storage_error(location, exc, "source") from exc
    return _split_by_suffix(fs, infos, suffixes)


def _source_file(fs, path: str, info: Mapping[str, Any]) -> SourceFile:
    size = int(info.get("size") or 0)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        version = f"etag:{str(etag).strip(chr(34))}"
    else:
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
        version = f"mtime:{mtime}:size:{size}"
    return SourceFile(fs.unstrip_protocol(path), size, version)


def _split_by_suffix(fs, infos: Mapping[str, dict], suffixes: tuple[str, ...]):
    wanted = tuple(s.lower() for s in suffixes)
    files, skipped = [], []
    for p, info in infos.items():
        if info.get("type", "file") != "file":
            continue
        if p.lower().endswith(wanted):
            files.append(_source_file(fs, p, info))
        else:
            skipped.append(fs.unstrip_protocol(p))
    return sorted(files), sorted(skipped)


class FileTooLarge(ValueError):
    """The object is larger than the configured limit; it was not read."""


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None, max_bytes: int | None = None) -> bytes:
    """Read a whole object, retrying transient errors. With ``max_bytes``, raise :class:`FileTooLarge`
    instead of reading a larger one."""
    fs, path = filesystem_for(uri, storage_options)
    if max_bytes is not None:
        size = with_retries(lambda: fs.size(path), f"reading {uri}")
        if size is not None and size > max_bytes:
            msg = f"file is {size} bytes, over the limit of {max_bytes} (rasterize.max_file_bytes)"
            raise FileTooLarge(msg)
    return with_retries(lambda: fs.cat_file(path), f"reading {uri}")


def content_hash(uri: str, storage_options: Mapping[str, Any] | None = None, chunk_bytes: int = 1 << 22) -> str:
    """sha256 hex digest of an object's bytes, streamed in chunks (bounded memory), retrying transient errors."""
    fs, path = filesystem_for(uri, storage_options)

    def digest() -> str:
        hasher = hashlib.sha256()
        with fs.open(path, "rb", block_size=chunk_bytes) as handle:
            while chunk := handle.read(chunk_bytes):
                hasher.update(chunk)
        return hasher.hexdigest()

    return with_retries(digest, f"hashing {uri}")


def file_stem(uri: str) -> str:
    """The file name of a path or URL without its suffix (``s3://b/x/report.pdf`` -> ``report``)."""
    return posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]


def read_parquet(handle: IO[bytes], columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """A Parquet file from an open (fsspec) file object, read and decoded on the calling thread only.

    Use this, never ``pq.read_table(handle)``: given a Python file object, that runs a dataset scan whose
    tasks on Arrow's thread pools still hold buffers of Python objects after it has returned, and they
    release them (which takes the GIL) whenever they get to run. If the interpreter is finalizing by
    then, Python ends that pool thread inside a C++ destructor and the process aborts with
    "terminate called without an active exception" (SIGABRT) after its work is done
    (apache/arrow#33975, #34314). ``ParquetFile(pre_buffer=False).read(use_threads=False)`` starts no
    thread and drops every reference before returning.

    With ``schema``, the result has its fields (those in ``columns``, in that order, if given): columns
    the file lacks come back as nulls and the others are cast, as ``pq.read_table(schema=...)`` does.
    """
    parquet = pq.ParquetFile(handle, pre_buffer=False)
    present = set(parquet.schema_arrow.names)
    unknown = [name for name in columns or () if name not in (present if schema is None else schema.names)]
    if unknown:
        msg = f"no column {unknown} in {'the file' if schema is None else 'the schema'}"
        raise pa.ArrowInvalid(msg)
    if schema is None:
        return parquet.read(columns=columns, use_threads=False)
    fields = [schema.field(name) for name in (schema.names if columns is None else columns)]
    table = parquet.read(columns=[f.name for f in fields if f.name in present], use_threads=False)
    arrays = [
        table.column(f.name).cast(f.type) if f.name in present else pa.nulls(table.num_rows, f.type) for f in fields
    ]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def write_local_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the local file ``path`` with ``data`` through a temporary file and a rename, so a concurrent reader
    (another process, a metrics scraper) sees the old or the new file, never a torn one."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
