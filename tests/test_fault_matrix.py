"""The fault matrix: every fault, on each backend and each storage, run for real.

README "Faults and what survives them" is this module's table. Each cell is one test
(``test_<fault>[<backend>-<storage>]``); each ends with the same check (:func:`assert_exactly_once`): every
page of every listed file is in the index exactly once, every file is accounted for, and no run is left
pending. Storage is a local directory or a bucket on moto's S3 server (``tests/s3_server.py``, clients
unpatched, s3fs's instance cache on as in production). Ray cells run on the session's Ray instance: the
runs that must be killed or stopped from outside are separate driver processes joining it, the others run
in this process.
"""

from __future__ import annotations

import contextlib
import io as bytes_io
import itertools
import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import s3fs

from pipelines import index
from pipelines.index import ledger
from pipelines.testing import failpoints, hostile
from pipelines.testing.corpus import EXPECTED_PAGE_COUNTS
from tests.helpers import index_config, start_cli
from tests.s3_server import Fault, FaultProxy, MotoS3

#: Three small documents of the sample corpus (7 pages), plus the poison file: a letter page and a page of
#: 3 x 2,000,000 pt, which at any pixel budget is far beyond the 65,500 pixels JPEG can encode (the kind of file
#: that stopped every run of a real backfill).
DOCUMENTS = ("coral_reef_research_note.pdf", "product_launch_slides.pdf", "water_main_notice.pdf")
POISON = "absurd_page_box.pdf"
PAGES = {name: EXPECTED_PAGE_COUNTS[name] for name in DOCUMENTS}
#: One page per block and small Ray batches: documents span several part files, so kills land mid-document.
SMALL_BLOCKS = ["rasterize.window_pages=1", *(f"ray.stages.{s}.batch_size=2" for s in ("embed", "pool", "binarize"))]
BACKENDS = ("local", "ray")
STORAGES = ("local", "s3")
_buckets = itertools.count()


def cells():
    """(backend, storage) pairs. Ray cells use their xdist worker's session Ray instance; the Ray x S3 cells form
    a group of their own, so the scheduler can run them beside the other Ray tests (on the other worker, with a
    Ray instance of its own) instead of after them."""
    for backend in BACKENDS:
        for storage in STORAGES:
            group = {"local": "ray", "s3": "ray_s3"}[storage]
            marks = [pytest.mark.xdist_group(group)] if backend == "ray" else []
            yield pytest.param(backend, storage, id=f"{backend}-{storage}", marks=marks)


matrix = pytest.mark.parametrize(("backend", "storage"), list(cells()))


@pytest.fixture(scope="module")
def moto():
    with MotoS3() as server:
        yield server


@dataclass
class Place:
    """Where one cell's source files and index live."""

    source: str
    output: str
    storage_options: dict | None = None

    @property
    def fs(self):
        if self.storage_options is None:
            return index.IndexLocation(self.source).fs
        return s3fs.S3FileSystem(**self.storage_options)

    def put(self, name: str, data: bytes) -> None:
        path = f"{self.source}/{name}"
        if self.storage_options is None:
            Path(path).write_bytes(data)
        else:
            self.fs.pipe(path.removeprefix("s3://"), data)

    def remove(self, name: str) -> None:
        self.fs.rm(f"{self.source}/{name}".removeprefix("s3://"))

    def location(self) -> index.IndexLocation:
        return index.IndexLocation(self.output, self.storage_options)

    def files(self) -> dict[str, float]:
        """Every object under the index with its modification time or ETag (what a run may change)."""
        fs, root = self.location().fs, self.location().root
        fs.invalidate_cache()
        return {path: info.get("mtime") or info.get("ETag") for path, info in fs.find(root, detail=True).items()}

    def overrides(self, backend: str, source_endpoint: str | None = None) -> list[str]:
        """The job's arguments; ``source_endpoint`` reads the source through another endpoint (a fault proxy)."""
        args = ["model=tiny", f"backend={backend}", f"source.location={self.source}", f"output.location={self.output}"]
        if self.storage_options is not None:
            source = self.storage_options
            if source_endpoint:
                source = {**source, "client_kwargs": {**source["client_kwargs"], "endpoint_url": source_endpoint}}
            args += [f"++source.storage_options={hydra_dict(source)}"]
            args += [f"++output.storage_options={hydra_dict(self.storage_options)}"]
        return [*args, *SMALL_BLOCKS]


def hydra_dict(value) -> str:
    """``value`` as a Hydra override literal (dicts, strings, numbers)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_dict(item)}" for key, item in value.items()) + "}"
    return f"'{value}'" if isinstance(value, str) else str(value)


@pytest.fixture
def place(storage, tmp_path, request) -> Place:
    """A fresh source (the three documents and the poison file) and an empty index location."""
    if storage == "local":
        (tmp_path / "src").mkdir()
        found = Place(str(tmp_path / "src"), str(tmp_path / "index"))
    else:
        server = request.getfixturevalue("moto")
        bucket = f"cell{next(_buckets)}"
        options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": server.url}}
        options["client_kwargs"]["region_name"] = "eu-west-1"
        s3fs.S3FileSystem(**options).mkdir(bucket)
        found = Place(f"s3://{bucket}/pdfs", f"s3://{bucket}/index", options)
    sample = request.getfixturevalue("sample_corpus")
    for name in DOCUMENTS:
        found.put(name, (sample / name).read_bytes())
    found.put(POISON, hostile.absurd_box())
    return found


@pytest.fixture
def runtime(backend, request, tiny_model_dir):
    """The session's Ray instance for Ray cells (in-process runs use it; driver processes join it)."""
    if backend == "ray":
        import ray

        request.getfixturevalue("ray_cluster")
        return ["ray.address=" + ray.get_runtime_context().gcs_address]
    return []


def run_here(place: Place, backend: str, *extra: str, source_endpoint: str | None = None) -> tuple[int, dict]:
    """Run the index job in this process; (exit status, report of the index's last run)."""
    from jobs.index import run

    cfg = index_config(*place.overrides(backend, source_endpoint), *extra)
    with contextlib.redirect_stdout(bytes_io.StringIO()):
        status = run(cfg)
    return status, place.location().read_report()


def start_driver(place: Place, backend: str, runtime: list[str], *extra: str, env=None) -> subprocess.Popen:
    """The index job as its own process (and process group), for the cells that kill or stop it."""
    args = [*place.overrides(backend), *runtime, *extra]
    return start_cli("jobs.index", *args, env=env, start_new_session=True)


def kill_tree(process: subprocess.Popen) -> None:
    tree = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.communicate(timeout=60)


def wait_for(condition, what: str, timeout: float = 300, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the job ended ({process.returncode}) before {what}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def page_parts(place: Place) -> int:
    """Page part files in the index now (``part_files`` asks the store, past any cached listing)."""
    return len(place.location().part_files("pages"))


def assert_exactly_once(place: Place) -> dict:
    """Every page of every document once, the poison file accounted for, every listed file accounted for,
    no run pending; returns the last run's report."""
    location = place.location()
    pages = location.read_pages(["page_id", "source_uri"])
    page_ids = pages.column("page_id").to_pylist()
    assert len(page_ids) == len(set(page_ids)), "a page is in the index twice"
    per_file = Counter(uri.rsplit("/", 1)[-1] for uri in pages.column("source_uri").to_pylist())
    per_file.pop(POISON, None)
    assert dict(per_file) == PAGES
    state = {uri.rsplit("/", 1)[-1]: row for uri, row in location.ledger.state().items()}
    poison = state[POISON]
    assert poison["status"] in ledger.LIVE and (poison["status"] == ledger.INDEXED or poison["error_type"])
    report = location.read_report()
    assert report["files_unaccounted"] == []
    assert ledger.Ledger(location).pending_runs() == []
    return report


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


# -- SIGKILL of the driver -----------------------------------------------------------------------------------


@pytest.mark.slow
@matrix
def test_sigkill_driver(backend, storage, place, runtime):
    """The job's whole process tree is killed while pages are being written; the same command resumes it:
    the documents the killed run finished are kept, the rest is done once."""
    process = start_driver(place, backend, runtime)
    wait_for(lambda: page_parts(place) >= 2, "two page parts were written", process=process)
    kill_tree(process)
    assert page_parts(place) >= 2
    assert place.location().read_pages(["page_id"]).num_rows == 0  # nothing is visible before a commit

    status, report = run_here(place, backend)
    assert status == 0, report
    assert len(report["recovered_runs"]) == 1
    assert_exactly_once(place)


# -- SIGKILL of a worker ---------------------------------------------------------------------------------------


@pytest.mark.slow
@matrix
def test_sigkill_worker(backend, storage, place, runtime):
    """A worker dies mid-run: on Ray, the worker of a write task right after its first part (Ray retries the
    task, which writes the same pages again); locally, the pdfium renderer process mid-page (the page is
    drawn by poppler). The run completes by itself."""
    armed = os.environ["PIPELINES_FAILPOINTS_FILE"]
    point = "after_write_block" if backend == "ray" else "pdfium_render:2"
    failpoints.arm(armed, point)
    try:
        status, report = run_here(place, backend)
        assert failpoints.fired(armed, point.split(":")[0])
    finally:
        failpoints.disarm(armed)
    assert status == 0, report
    assert_exactly_once(place)


# -- a poison file -------------------------------------------------------------------------------------------


@pytest.mark.slow
@matrix
def test_poison_file(backend, storage, place, runtime):
    """A PDF that opens but whose page cannot be encoded at the model's budget is that document's outcome (an
    error row with a reason, or a page clamped to what every later step accepts); the run goes on, and the
    rerun processes nothing new."""
    status, report = run_here(place, backend)
    assert status == 0, report
    assert_exactly_once(place)
    poison = {uri.rsplit("/", 1)[-1]: row for uri, row in place.location().ledger.state().items()}[POISON]
    assert (poison["status"], poison["pages"], poison["page_errors"]) == (ledger.INDEXED, 1, 1)
    assert poison["error_type"] == "invalid_page_size"
    status, rerun = run_here(place, backend)
    assert status == 0 and rerun["plan"]["to_process"] == 0, rerun["plan"]
    assert_exactly_once(place)


# -- SIGSTOP past the lease's TTL ------------------------------------------------------------------------------


@pytest.mark.slow
@matrix
def test_sigstop_past_ttl(backend, storage, place, runtime):
    """The driver stalls in the middle of its commit (after its ledger rows, before the commit marker) until
    its lease expires; another run takes the index over and completes. Continued, the stalled run writes
    nothing more and exits 5."""
    env = {"PIPELINES_FAILPOINTS": "commit_between_ledger_and_marker", "PIPELINES_FAILPOINTS_ACTION": "stop"}
    stalled = start_driver(place, backend, runtime, "lease.ttl_s=3", env=env)
    wait_for(lambda: psutil.Process(stalled.pid).status() == psutil.STATUS_STOPPED, "the run stopped", process=stalled)
    time.sleep(3.5)  # past its lease's TTL

    status, report = run_here(place, "local", "lease.ttl_s=3")
    assert status == 0, report
    before = place.files()
    os.kill(stalled.pid, signal.SIGCONT)
    code, stderr = finish(stalled)
    assert code == 5, stderr[-3000:]
    assert place.files() == before, "the run that lost its lease wrote to the index"
    assert_exactly_once(place)


# -- a part vanishes under a reader ---------------------------------------------------------------------------


@pytest.mark.slow
@matrix
def test_vanished_part(backend, storage, place, runtime):
    """A reader is part-way through the index when a writer's compaction deletes part files it listed (two
    documents removed with sync): the reader completes without error and sees each page once, as the index
    was when it started or as it is after the commit."""
    status, _ = run_here(place, backend)
    assert status == 0
    location = place.location()
    before = set(location.read_pages(["page_id"]).column("page_id").to_pylist())
    reader = index.IndexLocation(place.output, place.storage_options).iter_visible("pages", ["page_id"])
    seen = next(reader).column("page_id").to_pylist()  # the reader has listed the parts and read the first

    for name in DOCUMENTS[1:]:
        place.remove(name)
    status, report = run_here(place, backend, "source.sync=true", "source.sync_force=true")
    assert status == 0, report
    assert report["compaction"]["parts_deleted"] > 0
    after = set(location.read_pages(["page_id"]).column("page_id").to_pylist())

    seen += [page for table in reader for page in table.column("page_id").to_pylist()]
    assert len(seen) == len(set(seen)) and set(seen) in (before, after)


# -- the source listing fails --------------------------------------------------------------------------------


def unlistable_directory(root: Path) -> None:
    """A directory the OS cannot list: nested deeper than PATH_MAX, so listing it fails with ENAMETOOLONG (a
    real error from the kernel; permissions cannot deny anything to root)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(4200 // 200):
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("deep.pdf", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.mark.slow
@matrix
def test_listing_error(backend, storage, place, runtime, request):
    """Listing the source fails on a rerun with ``source.sync=true``: locally a directory the kernel cannot list
    (exit 7: the listing is incomplete); on S3, where a prefix is one flat listing, the store denies it (exit 2:
    access denied, naming the setting). The run stops before it plans anything; nothing indexed is removed or
    changed."""
    status, _ = run_here(place, backend)
    assert status == 0
    before = place.files()
    if storage == "local":
        unlistable_directory(Path(place.source))
        status, _ = run_here(place, backend, "source.sync=true")
    else:
        prefix = place.source.removeprefix("s3://").split("/", 1)[1]
        lists_source = lambda method, path: method == "GET" and f"prefix={prefix}" in path  # noqa: E731
        with FaultProxy(request.getfixturevalue("moto").url, [Fault("AccessDenied", lists_source, None)]) as proxy:
            status, _ = run_here(place, backend, "source.sync=true", source_endpoint=proxy.url)
        assert proxy.injected["AccessDenied"] > 0
    assert status == (7 if storage == "local" else 2)
    assert place.files() == before, "a run whose listing failed changed the index"
    assert_exactly_once(place)


# -- Vespa is down -------------------------------------------------------------------------------------------


@pytest.mark.slow
@matrix
def test_vespa_down(backend, storage, place, runtime):
    """Feeding Vespa inline, Vespa answers nothing but 503 for the whole run: the run commits every page to
    the index and exits 6 once ``vespa.feed.max_outage_s`` has passed; rerun with Vespa up, it feeds what was
    not fed, and Vespa holds each page of the index once."""
    from tests.vespa.conftest import vespa_id
    from tests.vespa.fake_vespa import FakeVespa, Status
    from tests.vespa.schema_check import validator

    down = [True]
    with FakeVespa(validator=validator(), fault=lambda request: Status(503) if down[0] else None) as vespa:
        feed = ["vespa.inline=true", f"vespa.endpoint.url={vespa.url}", "vespa.feed.max_outage_s=2"]
        feed += ["vespa.feed.backoff_initial_s=0.05", "vespa.feed.backoff_max_s=0.2"]
        status, report = run_here(place, backend, *feed)
        assert status == 6, report.get("vespa")
        assert vespa.documents == {}
        assert_exactly_once(place)

        down[0] = False
        status, report = run_here(place, backend, *feed)
        assert status == 0, report.get("vespa")
        assert report["plan"]["to_process"] == 0  # the index had every page: nothing is embedded again
        page_ids = place.location().read_pages(["page_id"]).column("page_id").to_pylist()
        assert sorted(vespa.documents) == sorted(vespa_id(page) for page in page_ids)
        assert max(vespa.put_counts.values()) == 1
        assert not vespa.errors
