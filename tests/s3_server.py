"""A real S3 protocol server on loopback for the tests: moto's ThreadedMotoServer, optionally behind a
small HTTP proxy that injects the faults object stores produce (503 SlowDown, 500, dropped
connections, 403 AccessDenied). Clients are never patched: s3fs/botocore talk HTTP to these servers.
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from moto.server import ThreadedMotoServer

ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>fault-proxy</RequestId></Error>"
)
STATUS_OF = {"SlowDown": 503, "InternalError": 500, "AccessDenied": 403}


class MotoS3:
    """moto's S3 on an ephemeral loopback port, starting empty.

    moto keeps its backends in process-wide state, so a server started after another one in the same process
    (a later test module on the same xdist worker) would see the earlier buckets: each start resets them.
    Servers in one process must therefore not overlap (module-scoped fixtures never do).
    """

    def __init__(self):
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def __enter__(self) -> MotoS3:
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request("POST", "/moto-api/reset")
            assert connection.getresponse().status == 200, "moto did not reset its state"
        finally:
            connection.close()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


@dataclass
class Fault:
    """Answer requests matching ``when(method, path)`` with ``kind`` (an S3 error code or ``"reset"``),
    ``times`` times (None: always)."""

    kind: str
    when: Callable[[str, str], bool]
    times: int | None = 1


@dataclass
class FaultProxy:
    """HTTP/1.1 reverse proxy to ``upstream`` that injects :class:`Fault` s in order.

    With ``access_key``, a request not signed with that key is refused as S3 refuses a wrong key (403
    AccessDenied; moto itself accepts any). ``requests`` lists ``(method, path)`` of every request received.
    """

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    injected: Counter = field(default_factory=Counter)
    forwarded: int = 0
    access_key: str | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        host, port = self.upstream.removeprefix("http://").split(":")
        self._target = (host, int(port))

    def take_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            for fault in self.faults:
                if (fault.times is None or fault.times > 0) and fault.when(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                    self.injected[fault.kind] += 1
                    return fault.kind
            self.forwarded += 1
        return None

    def __enter__(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._body()
                proxy.requests.append((self.command, self.path))
                signed = f"Credential={proxy.access_key}/" in self.headers.get("Authorization", "")
                kind = "AccessDenied" if proxy.access_key and not signed else proxy.take_fault(self.command, self.path)
                if kind == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if kind is not None:
                    payload = ERROR_XML.format(code=kind, message=f"injected {kind}").encode()
                    self.send_response(STATUS_OF[kind])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(*proxy._target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                if body or "Content-Length" in self.headers:
                    headers["Content-Length"] = str(len(body))
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                content_length = response.getheader("Content-Length")
                self.send_header("Content-Length", content_length if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def storage_options(endpoint_url: str) -> dict:
    """s3fs options for a loopback endpoint (moto accepts any credentials).

    Filesystem instances are cached as in production (no ``skip_instance_cache``): one per options per process,
    each with a directory cache that never expires, so the tests see what a long-lived driver sees.
    """
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint_url, "region_name": "eu-west-1"},
    }
