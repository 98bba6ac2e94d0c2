"""One writer per index: the lease refuses a second concurrent run, and a stale lease (expired, or held by a
process of this host that is gone) is taken over, on a local directory and on S3 (moto, real conditional
requests through s3fs: ``If-None-Match``/``If-Match``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import s3fs

from jobs.index import EXIT_LOCKED, run
from pipelines import index
from pipelines.index import lease
from pipelines.index.lease import IndexLocked, LeaseConfig, LeaseLost
from tests.helpers import index_config
from tests.s3_server import MotoS3, storage_options


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def plant(path, **fields) -> None:
    """A lease object as another run would have left it."""
    now = time.time()
    record = {
        "run_id": "otherrun",
        "host": "another-host",
        "pid": 4242,
        "pid_started": now - 100,
        "acquired_at": now - 100,
        "renewed_at": now - 10,
        "expires_at": now + 300,
        "ttl_s": 300,
        **fields,
    }
    path.write_text(json.dumps(record))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def moto():
    with MotoS3() as server:
        yield server


def test_second_run_is_refused_while_the_lease_is_live_then_admitted_after_release(tmp_path):
    fs = index.IndexLocation(str(tmp_path)).fs
    first = lease.acquire(fs, str(tmp_path), "idx", "run1", LeaseConfig(ttl_s=60))
    with pytest.raises(IndexLocked, match=r"run run1 on .*pid \d+.*expires at"):
        lease.acquire(fs, str(tmp_path), "idx", "run2", LeaseConfig(ttl_s=60))
    with pytest.raises(IndexLocked):
        lease.ensure_free(fs, str(tmp_path), "idx")
    first.release()
    assert not (tmp_path / lease.LEASE_FILE).exists()
    second = lease.acquire(fs, str(tmp_path), "idx", "run2", LeaseConfig(ttl_s=60))
    assert json.loads((tmp_path / lease.LEASE_FILE).read_text())["run_id"] == "run2"
    second.release()


def test_stale_leases_are_taken_over_live_ones_are_not(tmp_path):
    fs = index.IndexLocation(str(tmp_path)).fs
    path = tmp_path / lease.LEASE_FILE
    # Another host's run that stopped renewing: taken over once its expiry has passed, not before.
    plant(path, expires_at=time.time() + 0.3)
    with pytest.raises(IndexLocked):
        lease.acquire(fs, str(tmp_path), "idx", "mine", LeaseConfig())
    waited = lease.acquire(fs, str(tmp_path), "idx", "mine", LeaseConfig(wait_s=10), poll_s=0.05)
    assert json.loads(path.read_text())["run_id"] == "mine"
    waited.release()
    # A killed run on this host (its process is gone): taken over at once, long before its expiry.
    plant(path, host=socket.gethostname(), pid=dead_pid())
    taken = lease.acquire(fs, str(tmp_path), "idx", "mine", LeaseConfig())
    assert json.loads(path.read_text())["run_id"] == "mine"
    taken.release()
    # A live process of this host (this one) with an unexpired lease: refused.
    plant(path, host=socket.gethostname(), pid=os.getpid(), pid_started=lease._process_started(os.getpid()))
    with pytest.raises(IndexLocked):
        lease.acquire(fs, str(tmp_path), "idx", "mine", LeaseConfig())


def test_heartbeat_renews_and_a_stalled_holder_loses_the_index(tmp_path):
    fs = index.IndexLocation(str(tmp_path)).fs
    path = tmp_path / lease.LEASE_FILE
    held = lease.acquire(fs, str(tmp_path), "idx", "slow", LeaseConfig(ttl_s=0.4))
    first_expiry = json.loads(path.read_text())["expires_at"]
    time.sleep(0.5)  # beats every ttl/4
    assert json.loads(path.read_text())["expires_at"] > first_expiry
    held.check()
    # Another run takes the object over (as after an expiry): the holder's next beat finds it changed.
    plant(path, run_id="usurper", expires_at=time.time() + 300)
    deadline = time.monotonic() + 5
    while held.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="no longer holds"):
        held.check()
    held.release()  # never deletes a lease that is not ours
    assert json.loads(path.read_text())["run_id"] == "usurper"


def test_s3_conditional_writes_let_exactly_one_run_take_a_stale_lease(moto):
    fs = s3fs.S3FileSystem(**storage_options(moto.url))
    fs.mkdir("lease-bucket")
    root = "lease-bucket/index"
    clock = Clock()
    store = lease.versioned_object(fs, lease.lease_path(root))
    assert isinstance(store, lease.S3Object)
    first = lease.acquire(fs, root, "s3://lease-bucket/index", "run1", LeaseConfig(ttl_s=1000), clock=clock)
    assert store.create(b"{}") is None  # If-None-Match: * refuses to overwrite
    with pytest.raises(IndexLocked, match="run1"):
        lease.acquire(fs, root, "s3://lease-bucket/index", "run2", LeaseConfig(ttl_s=1000), clock=clock)

    # run1 stalls past its expiry; two runs read the stale lease at the same version and race to replace it.
    first._stop.set()
    clock.now += 2000
    data, version = store.read()
    assert json.loads(data)["run_id"] == "run1"
    winner = store.replace(b'{"run_id": "run2"}', version)
    loser = store.replace(b'{"run_id": "run3"}', version)  # If-Match on the version both read
    assert winner is not None and loser is None
    assert json.loads(store.read()[0])["run_id"] == "run2"
    assert store.delete(version) is False  # If-Match on delete: the old holder cannot remove it
    with pytest.raises(LeaseLost):
        first.check()
    assert first.renew() is False and first.lost
    assert store.delete(winner) is True and store.read() is None

    # The whole protocol on S3: a lease from a run that stopped renewing is taken over by acquire().
    stale = lease.acquire(fs, root, "s3://lease-bucket/index", "run4", LeaseConfig(ttl_s=1000), clock=clock)
    stale._stop.set()
    clock.now += 2000
    taker = lease.acquire(fs, root, "s3://lease-bucket/index", "run5", LeaseConfig(ttl_s=1000), clock=clock)
    assert json.loads(store.read()[0])["run_id"] == "run5"
    with pytest.raises(LeaseLost):
        stale.check()
    taker.release()
    assert store.read() is None


def test_index_job_refuses_a_second_concurrent_run_then_takes_over_a_stale_lease(
    sample_index, sample_corpus, tmp_path, capsys
):
    out = tmp_path / "index"
    shutil.copytree(sample_index[0], out)
    cfg = index_config(f"source.location={sample_corpus}", f"output.location={out}", "backend=local")
    before = sorted(p.name for p in (out / "ledger" / "runs").iterdir())

    # Another run of this host is writing the index (its lease is live and its process runs).
    other = lease.acquire(index.IndexLocation(str(out)).fs, str(out), str(out), "otherrun", LeaseConfig(ttl_s=60))
    started = time.monotonic()
    assert run(cfg) == EXIT_LOCKED
    assert time.monotonic() - started < 10  # fails before the backend starts or anything is read
    err = capsys.readouterr().err
    assert "being written by another run: run otherrun" in err and "lease.wait_s" in err
    assert sorted(p.name for p in (out / "ledger" / "runs").iterdir()) == before  # nothing planned
    other.release()

    # The run was killed on another machine: its lease expired; the next run takes the index over.
    plant(out / lease.LEASE_FILE, expires_at=time.time() - 1)
    assert run(cfg) == 0
    report = json.loads((out / "run_report.json").read_text())
    assert report["files_this_run"]["unchanged"] == report["files_listed"]
    assert not (out / lease.LEASE_FILE).exists()  # released at the end
