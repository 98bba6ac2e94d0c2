"""Bounded child processes: a memory limit, a timeout, and capped output for every renderer child.

Every poppler tool and the pdfium worker runs as its own process with ``RLIMIT_AS`` set for the child
(:func:`limited_command`: util-linux's ``prlimit`` sets it and execs the tool), in its own session (so a
timeout kills it and anything it started), with its output read from pipes by threads into bounded
buffers (:class:`CappedReader`): a child that writes gigabytes of warnings costs the job a few KB, never
the child's output size. A child that dies over its memory limit is told apart from other failures
(:func:`over_memory_limit`) so it becomes its own error type (``memory_limit``) instead of an
out-of-memory kill of the job. Every child gets a scrubbed environment (:func:`child_env`): an allow-list of
what the tools need, so the credentials in the job's environment (AWS, Vespa, the hub) never reach a process that
parses untrusted PDFs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: stderr bytes kept per child (the start: the first warnings are the informative ones).
STDERR_KEEP = 8 * 1024
#: Signals a process over RLIMIT_AS typically dies of: a failed allocation poppler or pdfium does not
#: check (SIGSEGV/SIGBUS), ``std::bad_alloc``/``abort()`` (SIGABRT), PartitionAlloc's OOM crash (SIGTRAP).
_OOM_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGTRAP})
_OOM_MESSAGES = ("out of memory", "bad_alloc", "memoryerror", "cannot allocate memory", "failed to allocate")
#: util-linux's ``prlimit`` (Debian: essential) sets the limit and execs the command in the same process. It spares
#: the job a ``preexec_fn``, which forces a full ``fork()`` of the job process instead of ``vfork``: measured 76 ms
#: instead of 10 ms of CPU per child once the job process holds 1.4 GB (a Ray worker that imported transformers).
PRLIMIT = shutil.which("prlimit")
#: The variables a renderer child inherits (an allow-list, so a new secret in the job's environment stays out by
#: default): where programs and libraries are, home and temporary directories, locale and time zone, fontconfig's
#: configuration and caches, the Python interpreter's own settings (the pdfium worker), Windows' basics.
CHILD_ENV = frozenset(
    {
        "PATH", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "DYLD_FALLBACK_LIBRARY_PATH",
        "HOME", "USER", "LOGNAME", "TMPDIR", "TMP", "TEMP", "LANG", "LANGUAGE", "TZ",
        "SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "USERPROFILE", "LOCALAPPDATA", "APPDATA",
    }
)  # fmt: skip
#: ... and every variable with one of these prefixes (the test suite's failpoints reach the children too).
CHILD_ENV_PREFIXES = ("LC_", "FONTCONFIG_", "XDG_", "PYTHON", "PIPELINES_FAILPOINTS")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a renderer child: the job's variables named by :data:`CHILD_ENV` and
    :data:`CHILD_ENV_PREFIXES`, nothing else, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k in CHILD_ENV or k.startswith(CHILD_ENV_PREFIXES)}
    return {**env, **(extra or {})}


def limit_memory(limit_bytes: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets the child's address-space limit (None: no limit, no preexec)."""
    if not limit_bytes:
        return None

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return preexec


def limited_command(args: Sequence[str], limit_bytes: int | None) -> tuple[list[str], Callable[[], None] | None]:
    """``(command, preexec_fn)`` for ``Popen`` that runs ``args`` with ``RLIMIT_AS`` at ``limit_bytes`` (soft and
    hard): through :data:`PRLIMIT` when it is installed, else with :func:`limit_memory` (None: no limit)."""
    if not limit_bytes:
        return list(args), None
    if PRLIMIT:
        return [PRLIMIT, f"--as={int(limit_bytes)}", "--", *args], None
    return list(args), limit_memory(limit_bytes)


class CappedReader(threading.Thread):
    """Drain a pipe to its end on a thread, keeping at most ``keep`` bytes (the first ones).

    Reading to the end (and discarding the rest) keeps the child from blocking on a full pipe; keeping
    only the start bounds what the job holds however much the child writes.
    """

    def __init__(self, pipe, keep: int):
        super().__init__(daemon=True)
        self.pipe, self.keep = pipe, keep
        self.chunks: list[bytes] = []
        self.kept = 0
        self.total = 0

    def run(self) -> None:
        try:
            while chunk := self.pipe.read(65536):
                self.total += len(chunk)
                if self.kept < self.keep:
                    chunk = chunk[: self.keep - self.kept]
                    self.chunks.append(chunk)
                    self.kept += len(chunk)
        except (OSError, ValueError):  # the pipe was closed under us (the child was killed)
            pass

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def truncated(self) -> bool:
        return self.total > self.kept


@dataclass
class BoundedResult:
    """What a bounded child did: exit status (negative: killed by that signal), kept output, sizes."""

    args: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_bytes: int
    memory_limit: int | None
    seconds: float

    @property
    def stderr_text(self) -> str:
        text = self.stderr.decode("utf-8", "replace").strip()
        if self.stderr_bytes > len(self.stderr):
            text += f" [... {self.stderr_bytes - len(self.stderr)} more bytes of stderr dropped]"
        return text

    @property
    def over_memory_limit(self) -> bool:
        return over_memory_limit(self.returncode, self.stderr, self.memory_limit)


class ChildTimeout(Exception):
    """A bounded child did not finish in time; it and its process group were killed."""

    def __init__(self, args: Sequence[str], timeout: float, stderr: bytes = b""):
        super().__init__(f"{args[0]} did not finish within {timeout:.1f}s")
        self.args_run, self.timeout, self.stderr = list(args), timeout, stderr


def over_memory_limit(returncode: int, stderr: bytes, limit: int | None) -> bool:
    """True when a child that ran under ``limit`` most likely died of it (a signal or an OOM message)."""
    if not limit or returncode == 0:
        return False
    if returncode < 0 and -returncode in _OOM_SIGNALS:
        return True
    text = stderr[-4096:].decode("utf-8", "replace").lower() + stderr[:4096].decode("utf-8", "replace").lower()
    return any(message in text for message in _OOM_MESSAGES)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a child started with ``start_new_session`` and everything in its process group, then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    process.wait()


def run_bounded(
    args: Sequence[str],
    timeout: float,
    memory_limit: int | None,
    stdout_cap: int,
    stderr_cap: int = STDERR_KEEP,
) -> BoundedResult:
    """Run ``args`` with a memory limit, a timeout and capped output; never raises for the child's failures
    except :class:`ChildTimeout` (the child is killed first)."""
    started = time.monotonic()
    command, preexec = limited_command(args, memory_limit)
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec,
        start_new_session=True,
        env=child_env(),
    )
    out, err = CappedReader(process.stdout, stdout_cap), CappedReader(process.stderr, stderr_cap)
    out.start()
    err.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        kill_group(process)
        out.join(5)
        err.join(5)
        raise ChildTimeout(args, timeout, err.data) from exc
    out.join()
    err.join()
    process.stdout.close()
    process.stderr.close()
    return BoundedResult(
        args=list(args),
        returncode=process.returncode,
        stdout=out.data,
        stderr=err.data,
        stdout_truncated=out.truncated,
        stderr_bytes=err.total,
        memory_limit=memory_limit,
        seconds=time.monotonic() - started,
    )
