"""A local stand-in for a Vespa container's HTTP API, for tests (no real Vespa can run on this machine).

It speaks HTTP/2 cleartext with prior knowledge (h2c) because pyvespa's async client (``VespaAsync``, built on
``httpr`` with ``http2_only=True``) refuses anything else. The server runs on its own asyncio event loop in a daemon
thread, bound to 127.0.0.1 on an ephemeral port::

    with FakeVespa() as server:
        app = Vespa(url=server.url)
        ...  # feed with the real client
        assert server.put_counts["id:pdf_page:pdf_page::a-p1"] == 1

Supported endpoints (a subset of https://docs.vespa.ai/en/reference/api/document-v1.html):

- ``POST   /document/v1/<ns>/<doctype>/docid/<id>``  put (create or replace), body ``{"fields": {...}}``
- ``PUT    /document/v1/<ns>/<doctype>/docid/<id>``  partial update, ``assign`` only; ``create=true`` upserts
- ``GET    /document/v1/<ns>/<doctype>/docid/<id>``  get, 404 when missing
- ``DELETE /document/v1/<ns>/<doctype>/docid/<id>``  remove, 200 whether or not the document existed
- ``GET    /document/v1/<ns>/<doctype>/docid?selection=..``  visit, chunked, with continuation tokens
- ``DELETE /document/v1/<ns>/<doctype>/docid?selection=..&cluster=..``  remove-where, chunked likewise
- ``group/<g>/<id>`` and ``number/<n>/<id>`` in place of ``docid/<id>`` (ids ``id:ns:type:g=<g>:<id>``, ``n=<n>``)
- ``POST /search/`` (or ``GET`` with query parameters) answered by ``FakeVespa.search_handler``
- ``GET /state/v1/health`` and ``GET /ApplicationStatus``

Document selections understand only ``true`` and conjunctions of ``<doctype>.<field> == "<string>"`` /
``!=`` comparisons joined by ``and``; anything else is answered with 400 rather than guessed at.

Nothing is persisted and there is no schema unless ``FakeVespa.validator`` supplies one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import gzip
import json
import re
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

__all__ = ["Drop", "FakeVespa", "Fault", "Hang", "RequestLog", "Reset", "Status"]

# Request bodies reach ~1 MB and 64 of them may be in flight on one connection: advertise windows big enough that the
# client never stalls on the default 64 KiB.
_STREAM_WINDOW = 4 * 1024 * 1024
_CONNECTION_WINDOW = 64 * 1024 * 1024
_DEFAULT_WINDOW = 65_535
_MAX_CONCURRENT_STREAMS = 256


# --------------------------------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Status:
    """Answer with status ``code`` and a Vespa-style error body ``{"pathId", "id", "message"}``.

    The operation is not applied. ``RequestLog.status`` records ``code``.
    """

    code: int
    message: str = "fault injected by FakeVespa"


@dataclass(frozen=True)
class Drop:
    """Abort the whole TCP connection without answering.

    The operation is not applied. Every other request in flight on the same connection is lost with it (their
    operations may or may not have been applied, exactly as with a real network failure).
    """


@dataclass(frozen=True)
class Reset:
    """Send RST_STREAM with ``error_code`` on this request's stream only; the operation is not applied.

    httpr (hyper) resends a request refused with REFUSED_STREAM by itself, below any pyvespa retry policy, so only
    other codes (the default INTERNAL_ERROR, CANCEL, ...) reach the caller as an error.
    """

    error_code: int = ErrorCodes.INTERNAL_ERROR


@dataclass(frozen=True)
class Hang:
    """Say nothing for ``seconds``, then reset the stream (CANCEL); the operation is not applied.

    If the client gives up first and resets the stream itself, the hang ends there.
    """

    seconds: float


Fault = Status | Drop | Reset | Hang


# --------------------------------------------------------------------------------------------------------------------
# Request log


@dataclass
class RequestLog:
    """One request as the server saw it.

    ``path`` is the request path without the query string, exactly as sent (still percent-encoded); ``params`` the
    decoded query parameters (the last value wins for repeated names); ``doc_id`` the full Vespa id for single-document
    /document/v1 requests, else None; ``headers`` the regular headers, lower-cased; ``index`` the 0-based arrival
    number since start or the last ``reset()``; ``body`` the request body after gzip decoding. ``status`` is None
    until answered and stays None for ``Drop``, ``Reset`` and ``Hang``.
    """

    method: str
    path: str
    params: dict[str, str]
    status: int | None
    doc_id: str | None
    headers: dict[str, str]
    index: int = 0
    body: bytes = field(default=b"", repr=False)


# --------------------------------------------------------------------------------------------------------------------
# Paths, ids and selections


@dataclass(frozen=True)
class _DocPath:
    """A parsed /document/v1 path. ``location`` is "", "g=<group>" or "n=<number>"; ``local_id`` None means "all"."""

    namespace: str
    doctype: str
    location: str
    local_id: str | None

    @property
    def doc_id(self) -> str | None:
        if self.local_id is None:
            return None
        return f"id:{self.namespace}:{self.doctype}:{self.location}:{self.local_id}"

    def contains(self, doc_id: str) -> bool:
        """Whether the stored document ``doc_id`` lies in this path's namespace, document type and location."""
        parts = doc_id.split(":", 4)
        if parts[1:3] != [self.namespace, self.doctype]:
            return False
        return not self.location or parts[3] == self.location


def _parse_document_path(path: str) -> _DocPath | None:
    """Parse ``/document/v1/<ns>/<doctype>/{docid|group/<g>|number/<n>}[/<local id>]``; None if it is not one."""
    if not path.startswith("/document/v1/"):
        return None
    parts = path.removeprefix("/document/v1/").split("/", 3)
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return None
    namespace, doctype, kind = unquote(parts[0]), unquote(parts[1]), parts[2]
    # Local ids may contain "/" (pyvespa quotes everything but "/"), so the id is the whole remainder.
    tail = parts[3] if len(parts) == 4 else ""
    if kind == "docid":
        return _DocPath(namespace, doctype, "", unquote(tail) if tail else None)
    if kind in ("group", "number"):
        location, _, local_id = tail.partition("/")
        location = unquote(location)
        if not location or (kind == "number" and not location.isdigit()):
            return None
        prefix = "g=" if kind == "group" else "n="
        return _DocPath(namespace, doctype, prefix + location, unquote(local_id) if local_id else None)
    return None


_COMPARISON = re.compile(r'\s*([A-Za-z_]\w*)\.([A-Za-z_]\w*)\s*(==|!=)\s*"((?:[^"\\]|\\["\\])*)"\s*')
_AND = re.compile(r"and(?=\s)", re.IGNORECASE)
_ESCAPE = re.compile(r"\\([\"\\])")


class _UnsupportedSelection(ValueError):
    pass


@dataclass(frozen=True)
class _Selection:
    """A conjunction of field comparisons; no comparisons means ``true``."""

    comparisons: tuple[tuple[str, str, str, str], ...]  # (doctype, field, operator, literal)

    @classmethod
    def parse(cls, text: str) -> _Selection:
        """Parse the supported subset of Vespa's document selection language, raising _UnsupportedSelection."""
        if text.strip().lower() == "true":
            return cls(())
        comparisons = []
        pos = 0
        while True:
            match = _COMPARISON.match(text, pos)
            # "id" is the document id, not a document type: id.* selections are outside the subset.
            if match is None or match.group(1).lower() == "id":
                raise _UnsupportedSelection(text)
            doctype, name, operator, literal = match.groups()
            comparisons.append((doctype, name, operator, _ESCAPE.sub(r"\1", literal)))
            pos = match.end()
            if pos == len(text):
                return cls(tuple(comparisons))
            match = _AND.match(text, pos)
            if match is None:
                raise _UnsupportedSelection(text)
            pos = match.end()

    def matches(self, doctype: str, fields: dict[str, Any]) -> bool:
        """Evaluate like Vespa's evaluator: a comparison naming another document type is false, and a missing field
        is null, so ``== "x"`` is false and ``!= "x"`` is true for it; non-strings compare by their JSON text."""
        for selected_type, name, operator, literal in self.comparisons:
            if selected_type != doctype:
                return False
            value = fields.get(name)
            equal = value is not None and (value if isinstance(value, str) else json.dumps(value)) == literal
            if equal != (operator == "=="):
                return False
        return True


def _encode_continuation(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode()


def _decode_continuation(token: str) -> str:
    """The id after which the next chunk starts; ValueError if ``token`` was not issued by this server."""
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        msg = f"Invalid continuation token {token!r}"
        raise ValueError(msg) from exc
    if not isinstance(after, str):
        msg = f"Invalid continuation token {token!r}"
        raise ValueError(msg)
    return after


def _decode_body(headers: dict[str, str], raw: bytes) -> tuple[bytes, str | None]:
    """The request body after content decoding, and a problem description if it could not be decoded."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw, None
    if encoding != "gzip":
        return raw, f"Unsupported content-encoding {encoding!r}"
    try:
        return gzip.decompress(raw), None
    except (OSError, EOFError, zlib.error) as exc:
        return raw, f"Could not gunzip request body: {exc}"


class _Reject(Exception):
    """Answer the current /document/v1 request with ``status`` and a Vespa-style error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body) if body else None
    except ValueError as exc:
        raise _Reject(400, f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _Reject(400, "Request body must be a JSON object")
    return value


def _fields_of(body: bytes) -> dict[str, Any]:
    fields = _json_object(body).get("fields")
    if not isinstance(fields, dict):
        raise _Reject(400, 'Request body must be a JSON object with a "fields" object')
    return fields


# --------------------------------------------------------------------------------------------------------------------
# Server


class FakeVespa:
    """An h2c server imitating a Vespa container, with fault injection. Use as a context manager or start()/stop().

    State, all readable from the test thread once the client is done (mutations happen under a lock on the server
    thread; ``reset()`` clears everything in place, keeping the hooks):

    - ``documents``: full id ``id:<ns>:<doctype>:<location>:<local id>`` -> fields, as stored
    - ``put_counts`` / ``update_counts``: full id -> number of applied puts (POST) / partial updates (PUT)
    - ``delete_counts``: full id -> number of removals of an existing document (by id or by selection)
    - ``requests``: every request in arrival order, see ``RequestLog``
    - ``errors``: exceptions raised by hooks or by the server itself; each request concerned was answered with 500,
      or with RST_STREAM if it happened while sending
    - ``connection_count``: TCP connections accepted since start (not reset)

    Hooks, settable at any time (they run on the server thread, under the state lock):

    - ``fault(request) -> Fault | None``: consulted first for every request, with the ``RequestLog`` (status None)
    - ``validator(doctype, fields) -> list[str]``: problems with a document about to be stored; any -> 400
    - ``search_handler(body) -> dict``: answers /search/; ValueError -> 400 with Vespa's query error shape
    - ``required_token``: when set, requests without ``authorization: Bearer <token>`` get 401
    - ``visit_chunk``: most documents a visit or selection removal handles per request
    """

    def __init__(
        self,
        *,
        fault: Callable[[RequestLog], Fault | None] | None = None,
        validator: Callable[[str, dict[str, Any]], list[str]] | None = None,
        search_handler: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        required_token: str | None = None,
        visit_chunk: int = 1000,
    ) -> None:
        self.fault = fault
        self.validator = validator
        self.search_handler = search_handler
        self.required_token = required_token
        self.visit_chunk = visit_chunk

        self.documents: dict[str, dict[str, Any]] = {}
        self.put_counts: collections.Counter[str] = collections.Counter()
        self.update_counts: collections.Counter[str] = collections.Counter()
        self.delete_counts: collections.Counter[str] = collections.Counter()
        self.requests: list[RequestLog] = []
        self.errors: list[BaseException] = []
        self.connection_count = 0

        self.port: int | None = None
        self._lock = threading.RLock()
        self._next_index = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._protocols: set[_H2ServerProtocol] = set()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; only valid while running."""
        if self.port is None:
            msg = "FakeVespa is not running"
            raise RuntimeError(msg)
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeVespa:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            msg = "FakeVespa is already running"
            raise RuntimeError(msg)
        ready = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-vespa", daemon=True)
        self._thread.start()
        ready.wait()
        if self.port is None:
            self._thread.join()
            self._thread = None
            msg = "FakeVespa failed to start"
            raise RuntimeError(msg) from self._startup_error
        return self

    def stop(self) -> None:
        """Abort all connections, cancel requests in progress and join the server thread. Idempotent."""
        if self._thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None
        self.port = None

    def __enter__(self) -> FakeVespa:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget documents, counters, requests and errors (in place) and restart ``index`` at 0; hooks stay."""
        with self._lock:
            self.documents.clear()
            self.put_counts.clear()
            self.update_counts.clear()
            self.delete_counts.clear()
            self.requests.clear()
            self.errors.clear()
            self._next_index = 0

    def _run(self, ready: threading.Event) -> None:
        try:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._serve(ready))
            finally:
                loop.close()
        except Exception as exc:
            self._startup_error = exc
        finally:
            # Never leave start() waiting; it checks the port to tell success from failure.
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        server = await loop.create_server(lambda: _H2ServerProtocol(self), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()

        await self._stopping.wait()
        server.close()
        for protocol in list(self._protocols):
            protocol.abort()
        await server.wait_closed()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    # -- request handling (server thread) ------------------------------------------------------------------------

    def _handle(
        self, method: str, raw_path: str, headers: dict[str, str], raw_body: bytes
    ) -> tuple[int, bytes] | Drop | Reset | Hang:
        """Log the request, consult ``fault`` and, unless it says otherwise, apply the request.

        Returns the response (status, JSON body) or the transport-level fault to enact. Synchronous on purpose:
        an operation is applied and answered without yielding to the event loop, so a cancelled stream never leaves
        an operation half-done.
        """
        path, _, query = raw_path.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        body, body_problem = _decode_body(headers, raw_body)
        doc_path = _parse_document_path(path)
        with self._lock:
            request = RequestLog(
                method=method,
                path=path,
                params=params,
                status=None,
                doc_id=doc_path.doc_id if doc_path else None,
                headers=headers,
                index=self._next_index,
                body=body,
            )
            self._next_index += 1
            self.requests.append(request)
            try:
                fault = self.fault(request) if self.fault is not None else None
                if isinstance(fault, Drop | Reset | Hang):
                    return fault
                if isinstance(fault, Status):
                    response = fault.code, _error_body(path, request.doc_id, fault.message)
                elif fault is not None:
                    msg = f"FakeVespa.fault returned {fault!r}, expected Status, Drop, Reset, Hang or None"
                    raise TypeError(msg)
                elif body_problem is not None:
                    response = 400, _error_body(path, request.doc_id, body_problem)
                else:
                    response = self._route(request, doc_path)
                status, payload = response[0], json.dumps(response[1]).encode()
            except Exception as exc:
                self.errors.append(exc)
                status = 500
                payload = json.dumps(_error_body(path, request.doc_id, f"FakeVespa internal error: {exc!r}")).encode()
            request.status = status
            return status, payload

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)

    def _route(self, request: RequestLog, doc_path: _DocPath | None) -> tuple[int, dict[str, Any]]:
        token = self.required_token
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return 401, {"message": "Missing or invalid bearer token"}
        method, path = request.method, request.path
        if doc_path is not None:
            try:
                return self._document_v1(request, doc_path)
            except _Reject as reject:
                return reject.status, _error_body(path, doc_path.doc_id, reject.message)
        if path in ("/search", "/search/") and method in ("GET", "POST"):
            return self._search(request)
        if method == "GET" and path == "/state/v1/health":
            return 200, {"status": {"code": "up"}}
        if method == "GET" and path == "/ApplicationStatus":
            return 200, {}
        return 404, {"message": f"FakeVespa has no handler for {method} {path}"}

    def _document_v1(self, request: RequestLog, doc_path: _DocPath) -> tuple[int, dict[str, Any]]:
        if doc_path.local_id is None:
            return self._document_v1_selection(request, doc_path)
        doc_id = doc_path.doc_id
        assert doc_id is not None
        ok = {"pathId": request.path, "id": doc_id}

        if request.method == "POST":
            fields = _fields_of(request.body)
            self._validate(doc_path.doctype, fields)
            self.documents[doc_id] = fields
            self.put_counts[doc_id] += 1
            return 200, ok

        if request.method == "PUT":
            assignments = {}
            for name, update in _fields_of(request.body).items():
                if not isinstance(update, dict) or set(update) != {"assign"}:
                    raise _Reject(400, f"FakeVespa supports only 'assign' field updates, got {name!r}: {update!r}")
                assignments[name] = update["assign"]
            existing = self.documents.get(doc_id)
            if existing is None and request.params.get("create", "false").lower() != "true":
                raise _Reject(404, "document not found")
            merged = dict(existing or {})
            for name, value in assignments.items():
                # Assigning null clears the field in Vespa.
                if value is None:
                    merged.pop(name, None)
                else:
                    merged[name] = value
            self._validate(doc_path.doctype, merged)
            self.documents[doc_id] = merged
            self.update_counts[doc_id] += 1
            return 200, ok

        if request.method == "GET":
            fields = self.documents.get(doc_id)
            if fields is None:
                raise _Reject(404, "not found")
            return 200, {**ok, "fields": fields}

        if request.method == "DELETE":
            if self.documents.pop(doc_id, None) is not None:
                self.delete_counts[doc_id] += 1
            return 200, ok

        raise _Reject(405, f"Method {request.method} is not supported on a document")

    def _document_v1_selection(self, request: RequestLog, doc_path: _DocPath) -> tuple[int, dict[str, Any]]:
        """Visit (GET) or remove-where (DELETE) the next chunk of documents under ``doc_path`` that match."""
        params = request.params
        if request.method not in ("GET", "DELETE"):
            raise _Reject(400, f"{request.method} needs a document id (FakeVespa has no update-where)")
        if request.method == "DELETE":
            if not params.get("selection"):
                raise _Reject(400, "Must specify 'selection' to remove documents without an id")
            if not params.get("cluster"):
                raise _Reject(400, "Must specify 'cluster' to remove documents by selection")
        try:
            selection = _Selection.parse(params.get("selection") or "true")
        except _UnsupportedSelection as exc:
            msg = (
                f"Unsupported document selection {str(exc)!r}: FakeVespa understands only 'true' and "
                "<doctype>.<field> == \"<string>\" / != comparisons joined by 'and'"
            )
            raise _Reject(400, msg) from exc
        limit = self.visit_chunk
        if request.method == "GET" and "wantedDocumentCount" in params:
            try:
                wanted = int(params["wantedDocumentCount"])
            except ValueError:
                wanted = 0
            if wanted < 1:
                raise _Reject(400, f"Invalid wantedDocumentCount {params['wantedDocumentCount']!r}")
            limit = min(limit, wanted)
        after = ""
        if "continuation" in params:
            try:
                after = _decode_continuation(params["continuation"])
            except ValueError as exc:
                raise _Reject(400, str(exc)) from exc

        matching = sorted(
            doc_id
            for doc_id, fields in self.documents.items()
            if doc_id > after and doc_path.contains(doc_id) and selection.matches(doc_path.doctype, fields)
        )
        chunk = matching[:limit]
        response: dict[str, Any] = {"pathId": request.path}
        if request.method == "GET":
            response["documents"] = [{"id": doc_id, "fields": self.documents[doc_id]} for doc_id in chunk]
        else:
            for doc_id in chunk:
                del self.documents[doc_id]
                self.delete_counts[doc_id] += 1
        response["documentCount"] = len(chunk)
        if len(matching) > limit:
            response["continuation"] = _encode_continuation(chunk[-1])
        return 200, response

    def _validate(self, doctype: str, fields: dict[str, Any]) -> None:
        if self.validator is not None:
            problems = self.validator(doctype, fields)
            if problems:
                raise _Reject(400, "; ".join(problems))

    def _search(self, request: RequestLog) -> tuple[int, dict[str, Any]]:
        if self.search_handler is None:
            return 501, _search_error(1, "Not implemented", "FakeVespa.search_handler is not set")
        # Vespa merges query-string parameters with the JSON body.
        body = dict(request.params)
        if request.method == "POST" and request.body:
            try:
                body.update(_json_object(request.body))
            except _Reject as reject:
                return 400, _search_error(4, "Invalid query parameter", reject.message)
        try:
            result = self.search_handler(body)
        except ValueError as exc:
            return 400, _search_error(4, "Invalid query parameter", str(exc))
        if not isinstance(result, dict):
            msg = f"FakeVespa.search_handler returned {type(result).__name__}, expected dict"
            raise TypeError(msg)
        return 200, result


def _error_body(path: str, doc_id: str | None, message: str) -> dict[str, Any]:
    body: dict[str, Any] = {"pathId": path}
    if doc_id is not None:
        body["id"] = doc_id
    body["message"] = message
    return body


def _search_error(code: int, summary: str, message: str) -> dict[str, Any]:
    return {"root": {"errors": [{"code": code, "summary": summary, "message": message}]}}


# --------------------------------------------------------------------------------------------------------------------
# HTTP/2 transport


@dataclass
class _IncomingRequest:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)


class _H2ServerProtocol(asyncio.Protocol):
    """One h2c connection. Each complete request is served by its own task, so a slow answer blocks no other."""

    def __init__(self, server: FakeVespa) -> None:
        self._server = server
        self._conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self._transport: asyncio.Transport | None = None
        self._incoming: dict[int, _IncomingRequest] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._window_waiters: dict[int, asyncio.Future[None]] = {}

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._protocols.add(self)
        self._server.connection_count += 1
        # Replacing the settings before the preface makes the large stream window effective immediately, instead of
        # only once the client acknowledges a later SETTINGS frame.
        self._conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_CONCURRENT_STREAMS,
                SettingCodes.MAX_HEADER_LIST_SIZE: self._conn.DEFAULT_MAX_HEADER_LIST_SIZE,
                SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            },
        )
        self._conn.initiate_connection()
        # The connection window is not a setting; only WINDOW_UPDATE can raise it above 64 KiB.
        self._conn.increment_flow_control_window(_CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # h2 has queued a GOAWAY describing the violation.
            self._flush()
            self.abort()
            return
        for event in events:
            self._on_event(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._protocols.discard(self)
        self._transport = None
        for task in self._tasks.values():
            task.cancel()
        self._wake_all()

    # -- h2 events -----------------------------------------------------------------------------------------------

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._incoming[event.stream_id] = _IncomingRequest(headers=list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            request = self._incoming.get(event.stream_id)
            if request is not None:
                request.body += event.data
            # The whole body is buffered anyway, so hand the window back at once.
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            request = self._incoming.pop(event.stream_id, None)
            if request is not None:
                task = asyncio.get_running_loop().create_task(self._respond(event.stream_id, request))
                self._tasks[event.stream_id] = task
                task.add_done_callback(lambda _, stream_id=event.stream_id: self._tasks.pop(stream_id, None))
        elif isinstance(event, h2.events.StreamReset):
            # The client gave up on the request (e.g. it timed out): stop hanging or waiting for window.
            self._incoming.pop(event.stream_id, None)
            task = self._tasks.get(event.stream_id)
            if task is not None:
                task.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                self._wake_all()
            else:
                self._wake(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._wake_all()
        elif isinstance(event, h2.events.ConnectionTerminated) and self._transport is not None:
            self._transport.close()

    # -- responding ----------------------------------------------------------------------------------------------

    async def _respond(self, stream_id: int, request: _IncomingRequest) -> None:
        pseudo = {name: value for name, value in request.headers if name.startswith(":")}
        headers: dict[str, str] = {}
        for name, value in request.headers:
            if not name.startswith(":"):
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            outcome = self._server._handle(
                pseudo.get(":method", ""), pseudo.get(":path", ""), headers, bytes(request.body)
            )
            if isinstance(outcome, Drop):
                self.abort()
            elif isinstance(outcome, Reset):
                self._reset(stream_id, outcome.error_code)
            elif isinstance(outcome, Hang):
                await asyncio.sleep(outcome.seconds)
                self._reset(stream_id, ErrorCodes.CANCEL)
            else:
                await self._send(stream_id, *outcome)
        except Exception as exc:
            # A bug here must fail the request visibly rather than leave the client waiting for its timeout.
            self._server._record_error(exc)
            self._reset(stream_id, ErrorCodes.INTERNAL_ERROR)

    async def _send(self, stream_id: int, status: int, body: bytes) -> None:
        """Send a complete response, in frames no larger than the peer's flow-control windows allow."""
        conn = self._conn
        headers = [
            (":status", str(status)),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            self._flush()
            sent = 0
            while sent < len(body):
                window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                if window <= 0:
                    await self._window_opened(stream_id)
                    continue
                chunk = body[sent : sent + window]
                sent += len(chunk)
                conn.send_data(stream_id, chunk, end_stream=sent == len(body))
                self._flush()
        except h2.exceptions.StreamClosedError:
            # The client reset the stream while we were sending; nobody is listening any more.
            pass

    async def _window_opened(self, stream_id: int) -> None:
        future = asyncio.get_running_loop().create_future()
        self._window_waiters[stream_id] = future
        try:
            await future
        finally:
            self._window_waiters.pop(stream_id, None)

    def _wake(self, stream_id: int) -> None:
        future = self._window_waiters.get(stream_id)
        if future is not None and not future.done():
            future.set_result(None)

    def _wake_all(self) -> None:
        for stream_id in list(self._window_waiters):
            self._wake(stream_id)

    def _reset(self, stream_id: int, error_code: int) -> None:
        try:
            self._conn.reset_stream(stream_id, error_code)
        except h2.exceptions.ProtocolError:
            return  # The stream is already closed.
        self._flush()

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
