"""Named crash points for the crash-resume tests: ``PIPELINES_FAILPOINTS=name[:n],...`` makes the
process SIGKILL itself the ``n``-th time (default 1st) it reaches ``hit(name)``. Unset (production),
``hit`` is a dictionary lookup.

With ``PIPELINES_FAILPOINTS_ONCE_DIR`` set, each point fires only once across processes (a marker file
is created before the kill), so a Ray task that is retried after the kill goes through.

``PIPELINES_FAILPOINTS_ACTION=stop`` makes the process SIGSTOP itself instead: it hangs holding its work
until something outside kills it (the multi-node test kills the whole Ray node it runs on).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

_hits: Counter = Counter()


def _armed() -> dict[str, int]:
    spec = os.environ.get("PIPELINES_FAILPOINTS", "")
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        points[name] = int(count or 1)
    return points


def hit(name: str) -> None:
    """SIGKILL this process if ``name`` is armed and reached for the armed number of times."""
    armed = _armed()
    if name not in armed:
        return
    _hits[name] += 1
    if _hits[name] != armed[name]:
        return
    once_dir = os.environ.get("PIPELINES_FAILPOINTS_ONCE_DIR")
    if once_dir:
        marker = Path(once_dir) / name
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            return
    stop = os.environ.get("PIPELINES_FAILPOINTS_ACTION", "kill") == "stop"
    os.kill(os.getpid(), signal.SIGSTOP if stop else signal.SIGKILL)
