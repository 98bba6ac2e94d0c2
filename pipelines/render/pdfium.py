"""pdfium (pypdfium2) as a renderer, in a long-lived, memory-limited, killable worker process.

:class:`PdfiumWorker` starts ``python -m pipelines.render.pdfium`` with ``RLIMIT_AS`` set in the child and
talks to it over its stdin/stdout with length-prefixed pickles. The worker keeps one document open and
serves requests for it (open, render a page, text of pages), so one process serves every page and
document. A request that does not answer within its timeout kills the worker; one
that kills it (a crash, or its memory limit) is reported as ``memory_limit`` or ``render_failed``; the
next request starts a fresh worker and reopens the document. The worker exits when its stdin closes,
so it never outlives the job. Pixels travel raw (RGB bytes) and are encoded by the stage, as poppler's.
:func:`shared_worker` keeps one worker per job process (or Ray worker process) and memory limit: Ray Data
hands every task a freshly unpickled stage, so a worker owned by the stage object would start again for
every document.

Only this module's ``serve`` loop imports pypdfium2: the job process never loads pdfium.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipelines.render import PDFIUM, DocumentError, DocumentInfo, PageSize
from pipelines.render.bounded import (
    STDERR_KEEP,
    CappedReader,
    child_env,
    kill_group,
    limited_command,
    over_memory_limit,
)
from pipelines.testing import failpoints

_HEADER = struct.Struct("<Q")
#: Largest answer accepted from the worker (a page image is at most hard_max_pixels * 3 bytes).
MAX_MESSAGE = 256 * 1024 * 1024


class PdfiumWorker:
    """Client of one pdfium worker process (started on first use, restarted after a crash or a timeout).

    Thread-safe: each request (with the reopen it may need) holds a lock, so stages on several threads of
    one process can share a worker (:func:`shared_worker`).
    """

    name = PDFIUM

    def __init__(self, memory_limit: int | None = None, start_timeout: float = 60.0):
        self.memory_limit = memory_limit
        self.start_timeout = start_timeout
        self._process: subprocess.Popen | None = None
        self._stderr: CappedReader | None = None
        self._document: str | None = None  # the path the worker has open
        self._lock = threading.RLock()
        self._owner = os.getpid()  # a forked copy of this object must not stop its parent's worker
        self.starts = 0

    # -- process management ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        env = child_env({"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path])})
        command, preexec = limited_command([sys.executable, "-m", "pipelines.render.pdfium"], self.memory_limit)
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
            start_new_session=True,
            env=env,
        )
        self._stderr = CappedReader(self._process.stderr, STDERR_KEEP)
        self._stderr.start()
        self._document = None
        self.starts += 1

    def close(self) -> None:
        """Stop the worker (closing its stdin ends it; it is killed if it does not exit promptly). The next
        request starts a new one."""
        with self._lock:
            process, self._process, self._document = self._process, None, None
            if process is None or os.getpid() != self._owner:
                return
            try:
                process.stdin.close()
                process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                kill_group(process)
            process.stdout.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _died(self, what: str) -> DocumentError:
        """The worker is gone: reap it and say why (its memory limit, or a crash)."""
        process, self._process, self._document = self._process, None, None
        kill_group(process)
        self._stderr.join(2)
        stderr = self._stderr.data
        text = stderr.decode("utf-8", "replace").strip()[-300:]
        if over_memory_limit(process.returncode, stderr, self.memory_limit):
            limit = self.memory_limit // 2**20
            msg = (
                f"pdfium worker exceeded its memory limit of {limit} MiB during {what} "
                f"(rasterize.pdfium_memory_limit_mb / memory_limit_mb; exit {process.returncode}): {text}"
            )
            return DocumentError("memory_limit", msg)
        return DocumentError(
            "render_failed", f"pdfium worker crashed during {what} (exit {process.returncode}): {text}"
        )

    def _call(self, request: tuple, timeout: float) -> Any:
        if self._process is None:
            self._start()
            timeout += self.start_timeout  # the interpreter and pypdfium2 import count against no page
        if request[0] != "open" and self._document is None:
            msg = "pdfium worker has no document open"
            raise DocumentError("render_failed", msg)
        what = f"{request[0]} {request[1] if len(request) > 1 else ''}".strip()
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self._process.stdin.write(_HEADER.pack(len(payload)) + payload)
            self._process.stdin.flush()
            header = self._read(_HEADER.size, time.monotonic() + timeout)
            if header is None:
                raise self._died(what)
            (size,) = _HEADER.unpack(header)
            if size > MAX_MESSAGE:
                msg_0 = f"{what} (an answer of {size} bytes)"
                raise self._died(msg_0)
            body = self._read(size, time.monotonic() + timeout)
            if body is None:
                raise self._died(what)
        except BrokenPipeError:
            raise self._died(what) from None
        except TimeoutError:
            process, self._process, self._document = self._process, None, None
            kill_group(process)
            msg = f"pdfium did not finish {what} within {timeout:.1f}s (rasterize.timeout_s / document_timeout_s)"
            raise DocumentError("timeout", msg) from None
        answer = pickle.loads(body)
        if isinstance(answer, dict) and "error" in answer:
            raise DocumentError(answer["error"], answer["message"])
        return answer

    def _read(self, size: int, deadline: float) -> bytes | None:
        """Exactly ``size`` bytes from the worker before ``deadline``; None at end of file (it died)."""
        fd = self._process.stdout.fileno()
        chunks, left = [], size
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    # -- the renderer ------------------------------------------------------------------------------

    def open(self, path: Path, timeout: float) -> DocumentInfo:
        with self._lock:
            pages, title = self._call(("open", str(path)), timeout)
            self._document = str(path)
        if not pages:
            raise DocumentError("no_pages", "PDF has zero pages (pdfium)")
        return DocumentInfo(PDFIUM, [PageSize(w, h) for w, h in pages], title)

    def _ensure(self, path: Path, timeout: float) -> None:
        if self._document != str(path):
            self.open(path, timeout)

    def render(self, path: Path, first: int, last: int, size: tuple[int, int], page: PageSize, timeout: float):
        """Pages first..last at ``size`` pixels, as PIL RGB images (one request per page)."""
        from PIL import Image

        images = []
        deadline = time.monotonic() + timeout
        for number in range(first, last + 1):
            with self._lock:
                self._ensure(path, max(0.1, deadline - time.monotonic()))
                answer = self._call(("render", number, size), max(0.1, deadline - time.monotonic()))
            mode, pixel_size, data = answer
            images.append(Image.frombytes(mode, pixel_size, data))
        return images

    def texts(self, path: Path, first: int, last: int, timeout: float) -> list[str] | None:
        """Text layers of pages first..last; None when pdfium cannot read them, :class:`DocumentError` on a
        timeout or the memory limit."""
        try:
            with self._lock:
                self._ensure(path, timeout)
                return self._call(("text", first, last), timeout)
        except DocumentError as exc:
            if exc.error_type in ("timeout", "memory_limit"):
                raise
            return None

    def release(self) -> None:
        """Close the worker's document (the worker stays up for the next one)."""
        with self._lock:
            if self._process is not None and self._document is not None:
                with contextlib.suppress(DocumentError):
                    self._call(("close",), 10.0)
                self._document = None


#: One worker per (process, memory limit); see :func:`shared_worker`.
_SHARED: dict[tuple[int, int | None], PdfiumWorker] = {}
_SHARED_LOCK = threading.Lock()


def shared_worker(memory_limit: int | None) -> PdfiumWorker:
    """This process's worker for ``memory_limit`` bytes, created on first use.

    A Ray Data task gets a freshly unpickled stage, so a worker owned by the stage object would cost a
    Python start-up (~0.1 CPU-s) per document; this one lives as long as the process (it exits when the
    process does: its stdin closes). :meth:`PdfiumWorker.close` stops it; the next request restarts it.
    """
    key = (os.getpid(), memory_limit)
    with _SHARED_LOCK:
        worker = _SHARED.get(key)
        if worker is None:
            worker = _SHARED[key] = PdfiumWorker(memory_limit)
        return worker


# -- the worker process ----------------------------------------------------------------------------


def _error(error_type: str, message: str) -> dict[str, str]:
    return {"error": error_type, "message": message[:2000]}


def _open(state: dict, path: str) -> Any:
    import pypdfium2 as pdfium

    _close(state)
    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            return _error("encrypted", "PDF is encrypted with a user password; cannot open it without one (pdfium)")
        return _error("corrupt", f"pdfium cannot read the PDF: {exc}")
    state["pdf"] = pdf
    # Sizes by index need no page load; pdfium applies /Rotate and falls back to the MediaBox itself.
    pages = [tuple(pdf.get_page_size(i)) for i in range(len(pdf))]
    title = " ".join(str(pdf.get_metadata_dict().get("Title") or "").split())[:512]
    return pages, title


def _render(state: dict, number: int, size: tuple[int, int]) -> Any:
    failpoints.hit("pdfium_render")  # the fault-matrix tests kill the worker mid-render
    page = state["pdf"][number - 1]
    try:
        width_pt, height_pt = page.get_size()
        if not (width_pt > 0 and height_pt > 0):
            return _error("invalid_page_size", f"page has no area ({width_pt} x {height_pt} pt)")
        # The smaller of the two scales: neither side rounds above the size asked for.
        scale = min(size[0] / width_pt, size[1] / height_pt)
        bitmap = page.render(scale=scale, rev_byteorder=True)
        try:
            image = bitmap.to_pil()
            if image.mode != "RGB":
                image = image.convert("RGB")
            return image.mode, image.size, image.tobytes()
        finally:
            bitmap.close()
    finally:
        page.close()


def _text(state: dict, first: int, last: int) -> list[str]:
    out = []
    for number in range(first, last + 1):
        page = state["pdf"][number - 1]
        try:
            textpage = page.get_textpage()
            try:
                out.append(textpage.get_text_range().replace("\r\n", "\n").strip())
            finally:
                textpage.close()
        finally:
            page.close()
    return out


def _close(state: dict) -> None:
    pdf = state.pop("pdf", None)
    if pdf is not None:
        pdf.close()


def _exit_with_parent(interval: float = 1.0) -> None:
    """End this worker when the process that started it is gone, even mid-render: a closed stdin is only noticed
    between requests, and a page that never finishes (the render bomb) must not outlive a killed job."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def serve() -> None:
    """The worker loop: read a request from stdin, answer on the original stdout, until stdin closes."""
    _exit_with_parent()
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything pdfium or Python prints goes to stderr, never into the protocol
    requests = sys.stdin.buffer
    state: dict[str, Any] = {}
    handlers = {"open": _open, "render": _render, "text": _text, "close": lambda s: _close(s)}
    while header := requests.read(_HEADER.size):
        (size,) = _HEADER.unpack(header)
        op, *args = pickle.loads(requests.read(size))
        try:
            answer = handlers[op](state, *args)
        except MemoryError:
            answer = _error("memory_limit", "pdfium worker ran out of memory (rasterize.pdfium_memory_limit_mb)")
        except Exception as exc:
            answer = _error("render_failed", f"pdfium {op} failed: {type(exc).__name__}: {exc}")
        payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        channel.write(_HEADER.pack(len(payload)) + payload)
        channel.flush()
    _close(state)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the job, which then closes us
    serve()
