"""Named crash points for the crash-resume tests: ``PIPELINES_FAILPOINTS=name[:n],...`` makes the
process SIGKILL itself the ``n``-th time (default 1st) it reaches ``hit(name)``. Unset (production),
``hit`` is two dictionary lookups.

With ``PIPELINES_FAILPOINTS_ONCE_DIR`` set, each point fires only once across processes (a marker file
is created before the kill), so a Ray task that is retried after the kill goes through.

``PIPELINES_FAILPOINTS_ACTION=stop`` makes the process SIGSTOP itself instead: it hangs holding its work
until something outside kills it (the multi-node test kills the whole Ray node it runs on) or continues it.

``PIPELINES_FAILPOINTS_FILE=<path>`` also arms the points written in that file (same syntax, read at each hit),
so a test can arm points in processes that are already running, such as the workers of a Ray instance started
before the test (:func:`arm`). Points armed there fire once across processes (a marker ``<path>.<name>.fired``, which
:func:`disarm` removes with the file); hit counts start again whenever the file's text changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections import Counter
from pathlib import Path

_hits: Counter = Counter()
_file_spec: list[str] = [""]  # the armed file's text the counts in _hits belong to


def _parse(spec: str) -> dict[str, int]:
    points = {}
    spec = ",".join(line.partition("#")[0] for line in spec.splitlines())
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        points[name] = int(count or 1)
    return points


def _from_file(path: str) -> dict[str, int]:
    try:
        spec = Path(path).read_text()
    except FileNotFoundError:
        spec = ""
    if spec != _file_spec[0]:
        _file_spec[0] = spec
        _hits.clear()
    return _parse(spec)


def hit(name: str) -> None:
    """SIGKILL (or SIGSTOP) this process if ``name`` is armed and reached for the armed number of times."""
    armed = _parse(os.environ.get("PIPELINES_FAILPOINTS", ""))
    armed_file = os.environ.get("PIPELINES_FAILPOINTS_FILE")
    from_file = _from_file(armed_file) if armed_file else {}
    count = armed.get(name) or from_file.get(name)
    if count is None:
        return
    _hits[name] += 1
    if _hits[name] != count:
        return
    markers = []
    if os.environ.get("PIPELINES_FAILPOINTS_ONCE_DIR"):
        markers.append(Path(os.environ["PIPELINES_FAILPOINTS_ONCE_DIR"]) / name)
    if name in from_file and name not in armed:
        markers.append(Path(f"{armed_file}.{name}.fired"))
    for marker in markers:
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return
    stop = os.environ.get("PIPELINES_FAILPOINTS_ACTION", "kill") == "stop"
    os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)


def arm(path: str | os.PathLike[str], spec: str) -> None:
    """Arm ``spec`` (``name[:n],...``) in every process whose ``PIPELINES_FAILPOINTS_FILE`` is ``path``."""
    disarm(path)
    # A new text at every arming, so every process starts counting again (one that never saw the file
    # disarmed would otherwise go on counting from an earlier arming of the same spec).
    Path(path).write_text(f"{spec}\n# armed {uuid.uuid4().hex}\n")


def fired(path: str | os.PathLike[str], name: str) -> bool:
    """True once a point armed through ``path`` has fired."""
    return Path(f"{os.fspath(path)}.{name}.fired").exists()


def disarm(path: str | os.PathLike[str]) -> None:
    """Disarm every point armed through ``path`` (and forget that they fired)."""
    path = Path(path)
    for marker in path.parent.glob(f"{path.name}.*.fired"):
        marker.unlink()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
