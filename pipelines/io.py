"""Reading and listing through fsspec: local paths, ``file://`` and any fsspec URL (``s3://`` …).

Object stores fail transiently (throttling, 5xx, dropped connections). s3fs and botocore already
retry a few of those; :func:`with_retries` adds a slower, jittered layer on top so a burst of
``SlowDown`` does not turn a good file into an error row. Missing buckets, denied access and an endpoint
that cannot be reached are not transient: they raise at once with a message that says what to check.

Listings never lie: :func:`list_inputs` lists everything or raises :class:`ListingIncomplete` (a walk
that skips a directory it could not read would make ``source.sync`` delete its files), and every
listing or existence check a decision depends on first drops what the filesystem instance has cached
(:func:`forget_listings`): object-store filesystems cache directory listings forever, and writes by
other processes (Ray workers, another run) never update that cache.

**Names.** URIs keep the name as the filesystem gives it, with one exception: a local file name that
is not valid UTF-8 (which no Arrow string can hold) has each byte that does not decode written as
``%XX`` and each ``%`` written as ``%25`` (:func:`local_uri`); :func:`filesystem_for` maps such a URI
back to the bytes on disk, so every reader opens the file it names.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import posixpath
import random
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, NamedTuple, TypeVar
from urllib.parse import unquote_to_bytes

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.asyn import AsyncFileSystem
from fsspec.spec import AbstractFileSystem
from fsspec.utils import glob_translate

from pipelines.errors import ConfigError

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


class ListingIncomplete(RuntimeError):
    """Listing the source hit an error, so it cannot say which files exist; nothing was planned."""


class EndpointUnreachable(ConfigError):
    """The object store's endpoint cannot be reached; the message names the setting to check."""


#: Exception types (anywhere in an error's cause chain) meaning "no connection to the endpoint at all".
_UNREACHABLE_TYPES = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectError")


def filesystem_for(location: str, storage_options: Mapping[str, Any] | None = None):
    """Return ``(fs, path)`` for a location, with the protocol stripped from ``path``; a local URI made by
    :func:`local_uri` for a name that is not UTF-8 gives the path of the bytes on disk."""
    fs, path = fsspec.core.url_to_fs(location, **dict(storage_options or {}))
    if "%" in path and is_local(fs):
        path = _local_path(path)
    return fs, path


def is_local(fs) -> bool:
    """True for the local filesystem (fsspec's ``file``/``local``)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def local_uri(path: str) -> str:
    """The ``file://`` URI of a local path as :func:`os.fsdecode` gives it (undecodable bytes as surrogates).

    A name that is valid UTF-8 is kept as is. One that is not gets each undecodable byte as ``%XX`` and each
    ``%`` as ``%25``, so the URI is valid UTF-8 and maps back to exactly the bytes on disk (:func:`_local_path`).
    """
    try:
        path.encode()
    except UnicodeEncodeError:
        path = "".join(
            f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else ("%25" if c == "%" else c) for c in path
        )
    return f"file://{path}"


_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def _local_path(path: str) -> str:
    """The local path a (protocol-stripped) URI names: as written if it exists, else with the ``%XX`` escapes of
    :func:`local_uri` decoded to bytes, if that gives a name that is not UTF-8 (the only names it escapes)."""
    if os.path.lexists(path) or not _ESCAPE.search(path):
        return path
    decoded = os.fsdecode(unquote_to_bytes(path))
    try:
        decoded.encode()
    except UnicodeEncodeError:
        return decoded
    return path


def forget_listings(fs, path: str) -> None:
    """Drop what ``fs`` has cached about ``path``, its parents and everything under it, so the next listing,
    ``exists`` or ``info`` asks the store.

    Object-store filesystems (s3fs, gcsfs, adlfs) cache every directory listing per filesystem instance, for
    ever; only that instance's own writes update the cache. Writes by other processes (Ray write tasks, another
    run, another host) stay invisible to it, so every listing a decision depends on goes through this first.
    ``invalidate_cache(path)`` drops ``path`` and its parents; entries under it are dropped here.
    """
    fs.invalidate_cache(path)
    cache = getattr(fs, "dircache", None)
    if cache:
        prefix = path.rstrip("/") + "/"
        for key in [key for key in list(cache) if str(key).startswith(prefix)]:
            cache.pop(key, None)


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


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) says the endpoint could not be connected to at all."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError) or type(exc).__name__ in _UNREACHABLE_TYPES:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def storage_error(location: str, exc: BaseException, setting: str) -> OSError | EndpointUnreachable:
    """A clear, non-retryable error for a location that cannot be used (missing, denied, unreachable)."""
    if is_unreachable(exc):
        msg = (
            f"cannot reach the object store for {location!r}: check the endpoint in {setting}.storage_options "
            f"(client_kwargs.endpoint_url) and the network ({type(exc).__name__}: {exc})"
        )
        return EndpointUnreachable(msg)
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
    forget_listings(fs, bucket)
    try:
        if not with_retries(lambda: fs.exists(bucket), f"checking {location}"):
            fs.info(bucket)  # exists() says False for any error (an endpoint it cannot reach too): ask why
            msg = f"bucket {bucket!r} not found"
            raise FileNotFoundError(msg)
    except Exception as exc:
        if isinstance(exc, PermissionError | FileNotFoundError) or is_unreachable(exc):
            raise storage_error(location, exc, setting) from exc
        raise


def list_inputs(
    location: str,
    suffixes: tuple[str, ...] = (".pdf",),
    glob: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[SourceFile], list[str]]:
    """List the input files under ``location``: ``([SourceFile], [skipped_uri])``, both sorted by URI.

    ``location`` may be a single file, a directory/prefix (searched recursively) or, with ``glob``,
    a directory plus a glob pattern relative to it. Suffixes match case-insensitively; files that do
    not match (and special files: FIFOs, sockets, devices) are returned as skipped so jobs can account for
    every file under the location. A single
    file named explicitly is taken whatever its suffix. URIs keep their protocol (``file://…``,
    ``s3://…``) so workers can reopen them with :func:`read_bytes` (local names that are not UTF-8: see
    :func:`local_uri`).

    The listing is complete or it raises :class:`ListingIncomplete` naming what could not be listed (never
    a listing with a directory left out). It asks the store, not a cached listing. On the local filesystem
    symbolic links are followed: a link to a file is listed at the link's path, a directory reached twice
    (two links, a loop) is walked once, and a link whose target is missing or loops is listed as a file
    that cannot be read (processing records why, as for any unreadable file).

    Raises ``FileNotFoundError`` when the location (or bucket) does not exist, ``PermissionError`` when
    access is denied and :class:`EndpointUnreachable` when the object store cannot be reached, each with a
    message naming the setting to fix; transient errors are retried.
    """
    fs, path = filesystem_for(location, storage_options)
    root = path.rstrip("/") or path
    what = f"listing {location}"
    forget_listings(fs, root)
    try:
        kind = with_retries(lambda: _kind(fs, root), what)
        if kind is None:
            msg = f"input location does not exist: {location!r} (set source.location to a PDF file or directory)"
            raise FileNotFoundError(msg)
        if kind == "file" and not glob:
            return [_source_file(fs, root, with_retries(lambda: _file_info(fs, root), what))], []
        infos = with_retries(lambda: _list_tree(fs, root), what)
    except (ListingIncomplete, EndpointUnreachable):
        raise
    except FileNotFoundError as exc:
        if "source.location" in str(exc):
            raise
        raise storage_error(location, exc, "source") from exc
    except Exception as exc:
        if isinstance(exc, PermissionError) or is_unreachable(exc):
            raise storage_error(location, exc, "source") from exc
        raise
    if glob:
        literal_root = re.sub(r"([*?\[])", r"[\1]", root)
        pattern = re.compile(glob_translate(posixpath.join(literal_root, glob)))
        infos = {p: info for p, info in infos.items() if pattern.match(p)}
    return _split_by_suffix(fs, infos, suffixes)


def _kind(fs, path: str) -> str | None:
    """``"file"``, ``"directory"`` or None (does not exist), following links on the local filesystem."""
    if is_local(fs):
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return None
        return "directory" if stat.S_ISDIR(mode) else "file"
    if not fs.exists(path):
        return None
    return "file" if fs.isfile(path) else "directory"


def _file_info(fs, path: str) -> dict[str, Any]:
    if is_local(fs):
        return _local_info(path)
    return fs.info(path)


def _local_info(path: str) -> dict[str, Any]:
    """fsspec-style info of a local file, following links; a link that cannot be followed is an unreadable file."""
    try:
        status = os.stat(path)
    except OSError as exc:
        return {"type": "file", "size": 0, "unreadable": errno.errorcode.get(exc.errno, "error")}
    kind = "file" if stat.S_ISREG(status.st_mode) else "other"  # a FIFO or device is never read (it may block)
    return {"type": kind, "size": status.st_size, "mtime": status.st_mtime}


def _list_tree(fs, root: str) -> dict[str, dict[str, Any]]:
    """Every file under ``root``: ``{path: info}``; raises :class:`ListingIncomplete` when part of it cannot
    be listed. Object stores list a prefix flat (one paginated listing: an error in it raises); other
    filesystems walk directories, raising on any that fails (fsspec's walk leaves those out by default)."""
    if is_local(fs):
        return dict(_walk_local(root))
    try:
        return find_all(fs, root, detail=True)
    except OSError as exc:
        if is_transient(exc) or isinstance(exc, PermissionError) or is_unreachable(exc):
            raise
        msg = f"could not list all of {fs.unstrip_protocol(root)!r}: {type(exc).__name__}: {exc}"
        raise ListingIncomplete(msg) from exc


def find_all(fs, path: str, detail: bool = False):
    """``fs.find(path)`` that raises on a directory it cannot list instead of leaving it out.

    fsspec's default ``find`` walks and leaves out any directory whose listing fails (below the top one even with
    ``on_error="raise"``, which its walk does not pass down): such filesystems are walked here, one ``ls`` per
    directory, raising. A filesystem with a ``find`` of its own is trusted: the object stores' lists a prefix
    flat, in one paginated listing that raises on any error."""
    if _own_find(fs):
        return fs.find(path, detail=detail)
    found: dict[str, dict[str, Any]] = {}
    pending = [path]
    while pending:
        directory = pending.pop()
        for info in fs.ls(directory, detail=True):
            if info["type"] == "directory":
                if info["name"].rstrip("/") != directory.rstrip("/"):
                    pending.append(info["name"])
            else:
                found[info["name"]] = info
    return found if detail else sorted(found)


def _own_find(fs) -> bool:
    if isinstance(fs, AsyncFileSystem):
        return type(fs)._find is not AsyncFileSystem._find
    return type(fs).find is not AbstractFileSystem.find


def _walk_local(root: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(path, info)`` of every file under the local directory ``root``, links followed, each directory once.

    Directories reached through a link are walked after every other one, so a directory that is also reachable
    without a link is listed at that path; a loop (or a second link to a directory) is not walked again.
    """
    visited: set[tuple[int, int]] = set()
    pending, linked = [root], []
    while pending or linked:
        directory = pending.pop() if pending else linked.pop()
        try:
            status = os.stat(directory)
            if (status.st_dev, status.st_ino) in visited:
                continue
            visited.add((status.st_dev, status.st_ino))
            with os.scandir(directory) as entries:
                listed = sorted(entries, key=lambda entry: entry.name, reverse=True)
        except OSError as exc:
            if is_transient(exc):
                raise
            where = local_uri(directory)
            msg = (
                f"could not list {where!r} ({errno.errorcode.get(exc.errno, '?')}: {exc.strerror}); "
                "no file was planned, since its files would count as deleted. Fix the directory (or move it "
                "out of source.location) and run again"
            )
            raise ListingIncomplete(msg) from exc
        for entry in listed:
            path = posixpath.join(directory, entry.name)
            try:
                is_dir = entry.is_dir()
            except OSError:  # a link that loops: not a directory we can walk, listed as an unreadable file
                is_dir = False
            if is_dir:
                (linked if entry.is_symlink() else pending).append(path)
            else:
                yield path, _local_info(path)


def _source_file(fs, path: str, info: Mapping[str, Any]) -> SourceFile:
    size = int(info.get("size") or 0)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if info.get("unreadable"):
        version = f"unreadable:{info['unreadable']}"
    elif etag:
        version = f"etag:{str(etag).strip(chr(34))}"
    else:
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
        version = f"mtime:{mtime}:size:{size}"
    return SourceFile(_uri(fs, path), size, version)


def _uri(fs, path: str) -> str:
    """The URI a listed path is given (local names that are not UTF-8: :func:`local_uri`)."""
    return local_uri(path) if is_local(fs) else fs.unstrip_protocol(path)


def _split_by_suffix(fs, infos: Mapping[str, dict], suffixes: tuple[str, ...]):
    wanted = tuple(s.lower() for s in suffixes)
    files, skipped = [], []
    for p, info in infos.items():
        if info.get("type", "file") == "directory":
            continue
        if info.get("type", "file") == "file" and p.lower().endswith(wanted):
            files.append(_source_file(fs, p, info))
        else:
            skipped.append(_uri(fs, p))
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
