"""Two things that happen to an index that many jobs use at once.

**Fenced commits**: a run stopped (SIGSTOP) past its lease's expiry at each irreversible step, while a second
run takes the index over and finishes, writes nothing when it wakes up: it exits 5 and the index (ledger,
markers, snapshot, parts) is exactly what the second run left, still exactly-once.

**Readers during writes**: a reader that listed the index before a rerun replaced and removed documents (so
compaction retired parts) reads on without an error and yields each page once: the index as it was when it
started while the grace period lasts, and a re-resolved view when the parts are deleted at once; on a local
directory and on S3 (moto). And a search loop during an index run sees no error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import s3fs

from jobs.index import EXIT_LOCKED, run
from pipelines import index, schema
from pipelines.index import lease, ledger
from pipelines.search import LocalIndex
from tests.helpers import index_config, start_cli
from tests.s3_server import MotoS3, storage_options

#: Small page images: the tests are about the index protocol, not the pixels. sync_force: the tests remove one of six
#: files on purpose, over the default source.sync_max_removed.
SETTINGS = ["model=tiny", "backend=local", "rasterize.max_pixels=60000", "source.sync=true", "source.sync_force=true"]
CHANGED, REMOVED = "water_main_notice.pdf", "coral_reef_research_note.pdf"
TTL_S = 3.0


@pytest.fixture(scope="module")
def template(sample_corpus, model_cache, tmp_path_factory) -> Path:
    """A source directory and its index, built once; tests copy both to ``<work>/src`` and ``<work>/index``
    (the ledger records the source's paths, so every copy of the source sits at the same path)."""
    root = tmp_path_factory.mktemp("concurrent")
    work = root / "work"
    (work / "src").mkdir(parents=True)
    for pdf in sample_corpus.glob("*.pdf"):
        shutil.copy(pdf, work / "src" / pdf.name)
    assert quiet_run(work / "src", str(work / "index")) == 0
    shutil.copytree(work, root / "template")
    return root


@pytest.fixture
def work(template) -> Path:
    work = template / "work"
    shutil.rmtree(work)
    shutil.copytree(template / "template", work)
    return work


def quiet_run(src: Path, out: str, *overrides: str, options: dict | None = None) -> int:
    """The index job in this process (the run that takes the index over, or the writer readers race)."""
    cfg = index_config(*SETTINGS, f"source.location={src}", f"output.location={out}", *overrides)
    cfg.output.storage_options = options or {}
    with contextlib.redirect_stdout(io.StringIO()):
        return run(cfg)


def change_source(src: Path) -> None:
    """One document replaced by new bytes, one removed (``source.sync``): compaction retires their parts."""
    with open(src / CHANGED, "ab") as handle:
        handle.write(b"\n% a new version of the file\n")
    (src / REMOVED).unlink()


def tree(root: Path) -> dict[str, str]:
    """Every file of the index (but the lease) and a digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(lease.LEASE_FILE)
    }


def assert_exactly_once(out: Path, src: Path) -> None:
    pages = index.IndexLocation(str(out)).read_pages(["page_id", "source_uri", "page_count"])
    ids = pages.column("page_id").to_pylist()
    assert len(ids) == len(set(ids))
    per_file: dict[str, int] = {}
    for uri, count in zip(pages.column("source_uri").to_pylist(), pages.column("page_count").to_pylist(), strict=True):
        per_file[Path(uri).name] = per_file.get(Path(uri).name, 0) + 1
        assert count >= per_file[Path(uri).name]
    assert sorted(per_file) == sorted(p.name for p in src.glob("*.pdf"))


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- fenced commits ------------------------------------------------------------------------------


def split_ledger(out: Path) -> None:
    """The ledger as 17 part files (one more than ledger.SNAPSHOT_PARTS), so the next commit snapshots it."""
    location = index.IndexLocation(str(out))
    [part] = location.part_files(ledger.SOURCES_DIR)
    table = location.read_part(part, ledger.LEDGER_SCHEMA)
    for k in range(ledger.SNAPSHOT_PARTS + 1):
        location.write_part(ledger.SOURCES_DIR, table.slice(k % table.num_rows, 1), tag=f"history{k}")


STEPS = {
    # failpoint: (overrides of the stalled run, what it would write next)
    "open_index": (["output.mode=overwrite"], "clearing the index"),
    "commit_after_lease_check": ([], "ledger rows"),
    "commit_between_ledger_and_marker": ([], "committed.json"),
    "compact_part_done": ([], "the retired list / deletes"),
    "snapshot_between_write_and_delete": ([], "deleting the merged ledger parts"),
}


@pytest.mark.parametrize("failpoint", list(STEPS))
def test_a_run_stalled_past_its_lease_writes_nothing_after_another_took_over(work, failpoint):
    src, out = work / "src", work / "index"
    overrides, _ = STEPS[failpoint]
    if failpoint.startswith("snapshot"):
        split_ledger(out)
    change_source(src)
    stalled = start_cli(
        "jobs.index",
        *SETTINGS,
        f"source.location={src}",
        f"output.location={out}",
        f"lease.ttl_s={TTL_S}",
        *overrides,
        env={"PIPELINES_FAILPOINTS": failpoint, "PIPELINES_FAILPOINTS_ACTION": "stop"},
    )
    try:
        process = psutil.Process(stalled.pid)
        wait_for(lambda: stalled.poll() is not None or process.status() == psutil.STATUS_STOPPED, 120, "never stopped")
        assert stalled.poll() is None, stalled.communicate()[1][-3000:]
        record = json.loads((out / lease.LEASE_FILE).read_text())
        wait_for(lambda: time.time() > record["expires_at"], 30, "the stalled run's lease never expired")

        # Another run takes the index over (recovering whatever the stalled one committed) and finishes.
        assert quiet_run(src, str(out)) == 0
        after_takeover = tree(out)
        assert_exactly_once(out, src)

        stalled.send_signal(signal.SIGCONT)
        _, stderr = stalled.communicate(timeout=120)
    finally:
        if stalled.poll() is None:
            stalled.send_signal(signal.SIGCONT)
            stalled.kill()
    assert stalled.returncode == EXIT_LOCKED, stderr[-3000:]
    assert "no longer holds the lease" in stderr
    assert tree(out) == after_takeover  # ledger, markers, snapshot, parts: untouched
    assert_exactly_once(out, src)


def test_every_write_of_a_store_fenced_by_a_lost_lease_is_refused(work):
    out = work / "index"
    location = index.IndexLocation(str(out))
    held = lease.acquire(location.fs, str(out), str(out), "stalled", lease.LeaseConfig(ttl_s=60))
    location.fence = held
    location.write_text("probe.txt", "while held")  # writes go through while the lease is ours
    held._stop.set()  # the heartbeat stalls; another run takes the lease over
    (out / lease.LEASE_FILE).write_text(json.dumps({"run_id": "usurper", "expires_at": time.time() + 60}))
    before = tree(out)
    book = location.ledger
    [part] = location.part_files("pages")[:1]
    attempts = {
        "text": lambda: location.write_text("config.yaml", "x"),
        "part": lambda: location.write_part("pages", location.read_part(part, schema.PAGES_TABLE_SCHEMA), tag="x"),
        "delete": lambda: location.delete([part]),
        "clear": location.clear_tables,
        "marker": lambda: book.mark_compacted(["run"], {}),
        "snapshot": lambda: book.snapshot("stalled"),
        "retired list": lambda: book.retire([part], grace_s=60),
        "retired delete": lambda: book.retire([part], grace_s=0),
        "vespa delete": location.check_fence,
    }
    for what, attempt in attempts.items():
        with pytest.raises(lease.LeaseLost, match="another run took the lease over"):
            attempt()
        assert tree(out) == before, what
    assert not list(out.rglob(".*.tmp"))  # refused renames leave no temporary file behind
    held.release()
    assert json.loads((out / lease.LEASE_FILE).read_text())["run_id"] == "usurper"


# -- readers during writes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto():
    with MotoS3() as server:
        yield server


def open_index(work: Path, backend: str, moto_url: str | None) -> tuple[str, dict]:
    """The work index where ``backend`` says: the local copy, or uploaded to a fresh S3 prefix."""
    if backend == "local":
        return str(work / "index"), {}
    options = storage_options(moto_url)
    fs = s3fs.S3FileSystem(**options)
    if not fs.exists("readers"):
        fs.mkdir("readers")
    prefix = f"readers/{time.time_ns()}"
    fs.put(str(work / "index"), prefix, recursive=True)
    return f"s3://{prefix}", options


@pytest.mark.parametrize(("backend", "grace_s"), [("local", None), ("local", 0), ("s3", None), ("s3", 0)], ids=str)
def test_a_reader_that_listed_the_index_before_compaction_reads_each_page_once(work, backend, grace_s, request):
    moto_url = request.getfixturevalue("moto").url if backend == "s3" else None
    out, options = open_index(work, backend, moto_url)
    before = set(index.IndexLocation(out, options).read_pages(["page_id"]).column("page_id").to_pylist())
    reader = index.IndexLocation(out, options).iter_visible("pages", ["page_id", "source_uri"])
    first = next(reader)  # the reader has its ledger state and listing, and has read one part
    assert Path(first.column("source_uri")[0].as_py()).name not in (CHANGED, REMOVED)

    change_source(work / "src")
    overrides = [] if grace_s is None else [f"output.compaction_grace_s={grace_s}"]
    assert quiet_run(work / "src", out, *overrides, options=options) == 0
    location = index.IndexLocation(out, options)
    report = location.read_report()
    assert report["compaction"]["parts_deleted"] >= 2  # the changed and the removed document's parts
    after = set(location.read_pages(["page_id"]).column("page_id").to_pylist())

    rest = list(reader)  # on main: FileNotFoundError, the parts it listed are gone
    ids = [pid for table in [first, *rest] for pid in table.column("page_id").to_pylist()]
    assert len(ids) == len(set(ids))  # each page once
    if grace_s is None:
        assert set(ids) == before  # the index as it was when the read started
        assert len(location.ledger.retired()) >= 2
    else:
        assert set(ids) - before <= after and (before & after) <= set(ids)  # re-resolved: nothing lost
        assert location.ledger.retired() == set()


def test_searches_during_an_index_run_that_compacts_never_fail(work):
    src, out = work / "src", work / "index"
    change_source(src)
    writer = start_cli(
        "jobs.index", *SETTINGS, f"source.location={src}", f"output.location={out}", "output.compaction_grace_s=0"
    )
    searches, rng = 0, np.random.default_rng(0)
    try:
        while writer.poll() is None and searches < 2000:
            pages = index.IndexLocation(str(out)).read_pages()
            ids = pages.column("page_id").to_pylist()
            assert len(ids) == len(set(ids))
            local = LocalIndex(pages, load_float=False)
            hits = local.search(rng.normal(size=(4, local.dim)).astype(np.float32), top_k=100, profile="binary")
            assert len({hit.page_index for hit in hits}) == len(hits) == len(ids)
            searches += 1
    finally:
        _, stderr = writer.communicate(timeout=300)
    assert writer.returncode == 0, stderr[-3000:]
    assert searches > 0
    assert_exactly_once(out, src)
