"""Object storage through s3fs against a real S3 protocol server on loopback (moto), with injected faults.

s3fs instances are cached per process as in production, each with a directory cache that never expires: every
listing the driver, ledger and view decide on must still see what other s3fs instances (Ray workers, another
host's run) wrote.

- A bucket prefix is indexed into an index that itself lives in the bucket; objects are added, changed and
  deleted, and the rerun (on Ray: its write tasks write through their own s3fs instances) embeds only what
  changed and commits all of it.
- One process runs the job twice on one index while another host's run writes it in between.
- Throttling, 5xx and dropped connections on reads are retried; the run completes. A listing error on one
  prefix leaves none of its files out.
- A missing bucket, denied access or an endpoint that cannot be reached fails before any work, with a message
  saying what to check.
"""

from __future__ import annotations

import hashlib
import socket

import pytest
import s3fs
from omegaconf import OmegaConf

from jobs.index import run as run_job
from pipelines import index, io
from pipelines.driver import run_index
from pipelines.index import ledger
from pipelines.testing.corpus import EXPECTED_PAGE_COUNTS
from tests.helpers import index_config
from tests.s3_server import Fault, FaultProxy, MotoS3, storage_options

NEW_PDF = "002-trivial-libre-office-writer_002-trivial-libre-office-writer.pdf"
CHANGED_PDF = "001-trivial_minimal-document.pdf"


@pytest.fixture(scope="module")
def moto():
    with MotoS3() as server:
        yield server


def s3(endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**storage_options(endpoint))


def cfg_for(source: str, output: str, source_endpoint: str | None, output_endpoint: str | None, extra=()):
    cfg = index_config(f"source.location={source}", f"output.location={output}", *extra)
    if source_endpoint:
        OmegaConf.update(cfg, "source.storage_options", storage_options(source_endpoint), force_add=True)
    if output_endpoint:
        OmegaConf.update(cfg, "output.storage_options", storage_options(output_endpoint), force_add=True)
    return cfg


def upload(fs: s3fs.S3FileSystem, bucket: str, files: dict[str, bytes]) -> None:
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for key, data in files.items():
        fs.pipe(f"{bucket}/{key}", data)


def doc_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@pytest.mark.slow
def test_bucket_prefix_incremental_runs_embed_only_changes(
    moto, ray_cluster, tiny_model_dir, sample_corpus, shared_corpus
):
    fs = s3(moto.url)
    upload(fs, "corpus", {f"pdfs/{p.name}": p.read_bytes() for p in sorted(sample_corpus.glob("*.pdf"))})
    fs.pipe("corpus/pdfs/README.txt", b"not a pdf")
    # The first run on the in-process backend (it leaves this process's s3fs instance with the index listed);
    # the rerun on Ray, whose write tasks add parts through their own s3fs instances.
    cfg = cfg_for("s3://corpus/pdfs", "s3://corpus/index", moto.url, moto.url, ["backend=local"])

    first = run_index(cfg)
    assert first["files_this_run"]["indexed"] == 6 and first["files_unaccounted"] == []
    assert first["pages_embedded"] == first["pages_indexed"] == sum(EXPECTED_PAGE_COUNTS.values())
    assert first["files_skipped_by_suffix"] == ["s3://corpus/pdfs/README.txt"]
    assert fs.exists("corpus/index/ledger/index.json") and fs.ls("corpus/index/pages")

    # Add one object, change one, delete one; the rerun syncs the index to the bucket.
    new, changed = (shared_corpus / NEW_PDF).read_bytes(), (shared_corpus / CHANGED_PDF).read_bytes()
    fs.pipe("corpus/pdfs/new/added.pdf", new)
    fs.pipe("corpus/pdfs/coral_reef_research_note.pdf", changed)
    fs.rm("corpus/pdfs/water_main_notice.pdf")
    OmegaConf.update(cfg, "source.sync", True)
    OmegaConf.update(cfg, "source.sync_max_removed", 0.2)  # 1 of 6 files
    OmegaConf.update(cfg, "backend", "ray")
    second = run_index(cfg)
    OmegaConf.update(cfg, "backend", "local")

    assert second["files_this_run"] == {"unchanged": 4, "indexed": 2, "duplicate": 0, "failed": 0, "unaccounted": 0}
    assert second["files_removed"] == 1
    location = index.IndexLocation("s3://corpus/index", storage_options(moto.url))
    pages = location.read_pages(["page_id", "doc_id", "source_uri"])
    new_docs = {doc_id(new), doc_id(changed)}
    new_pages = [d for d in pages.column("doc_id").to_pylist() if d in new_docs]
    assert second["pages_embedded"] == len(new_pages) > 0  # only the two new documents were embedded
    in_bucket = {doc_id(fs.cat(p)) for p in fs.find("corpus/pdfs") if p.endswith(".pdf")}
    assert set(pages.column("doc_id").to_pylist()) == in_bucket  # the index matches the bucket
    assert len(set(pages.column("page_id").to_pylist())) == pages.num_rows
    assert {u for u in pages.column("source_uri").to_pylist()} == {
        f"s3://{p}" for p in fs.find("corpus/pdfs") if p.endswith(".pdf")
    }
    state = ledger.Ledger(location).state()
    assert state["s3://corpus/pdfs/water_main_notice.pdf"]["status"] == "removed"

    third = run_index(cfg)
    assert third["pages_embedded"] == 0 and third["files_this_run"]["unchanged"] == 6


def test_one_process_runs_twice_while_another_host_writes_the_index(moto, tiny_model_dir, sample_corpus):
    pdfs = sorted(sample_corpus.glob("*.pdf"))
    fs = s3(moto.url)
    upload(fs, "twice", {f"in/{p.name}": p.read_bytes() for p in pdfs[:2]})
    here = cfg_for("s3://twice/in", "s3://twice/index", moto.url, moto.url, ["backend=local"])
    there = cfg_for("s3://twice/in", "s3://twice/index", moto.url, moto.url, ["backend=local"])
    for node in ("source", "output"):  # another host: s3fs instances of its own
        OmegaConf.update(there, f"{node}.storage_options.skip_instance_cache", True, force_add=True)

    assert run_index(here)["files_this_run"]["indexed"] == 2
    upload(fs, "twice", {f"in/{p.name}": p.read_bytes() for p in pdfs[2:4]})
    assert run_index(there)["files_this_run"]["indexed"] == 2
    upload(fs, "twice", {f"in/{p.name}": p.read_bytes() for p in pdfs[4:5]})
    third = run_index(here)

    assert third["files_this_run"] == {"unchanged": 4, "indexed": 1, "duplicate": 0, "failed": 0, "unaccounted": 0}
    assert third["pages_embedded"] == EXPECTED_PAGE_COUNTS[pdfs[4].name]  # nothing the other host did is redone
    pages = index.IndexLocation("s3://twice/index", {**storage_options(moto.url), "skip_instance_cache": True})
    page_ids = pages.read_pages(["page_id"]).column("page_id").to_pylist()
    assert len(page_ids) == len(set(page_ids)) == sum(EXPECTED_PAGE_COUNTS[p.name] for p in pdfs[:5])


def test_a_listing_error_on_one_prefix_leaves_none_of_its_files_out(moto, tmp_path):
    upload(s3(moto.url), "listing", {"in/a/one.pdf": b"%PDF-1.4 one", "in/b/two.pdf": b"%PDF-1.4 two"})

    def lists_b(method: str, path: str) -> bool:
        return method == "GET" and "list-type=2" in path and "prefix=in%2Fb%2F" in path

    with FaultProxy(moto.url, [Fault("AccessDenied", lists_b, None)]) as proxy:
        files, _ = io.list_inputs("s3://listing/in", glob="*/*.pdf", storage_options=storage_options(proxy.url))
    assert [f.uri for f in files] == ["s3://listing/in/a/one.pdf", "s3://listing/in/b/two.pdf"]

    # A listing that fails is an error, never a shorter listing.
    def lists_in(method: str, path: str) -> bool:
        return method == "GET" and "list-type=2" in path

    denied = [Fault("AccessDenied", lists_in, None)]
    with FaultProxy(moto.url, denied) as proxy, pytest.raises(PermissionError, match=r"denied.*source\.storage"):
        io.list_inputs("s3://listing/in", storage_options=storage_options(proxy.url))


def test_an_unreachable_endpoint_fails_before_any_work_naming_the_setting(moto, tmp_path, capsys, sample_corpus):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    once = ["+source.storage_options.config_kwargs.retries.max_attempts=1"]  # botocore's 4 retries would take 14 s
    assert run_job(cfg_for("s3://corpus/pdfs", str(tmp_path / "a"), closed, None, once)) == 2
    assert "cannot reach the object store" in (err := capsys.readouterr().err) and "source.storage_options" in err
    once = ["+output.storage_options.config_kwargs.retries.max_attempts=1"]
    assert run_job(cfg_for(str(sample_corpus), "s3://corpus/index", None, closed, once)) == 2
    assert "cannot reach the object store" in (err := capsys.readouterr().err) and "output.storage_options" in err
    assert not (tmp_path / "a").exists()


def test_throttling_server_errors_and_resets_are_retried(moto, tiny_model_dir, sample_corpus, tmp_path):
    upload(s3(moto.url), "flaky", {f"in/{p.name}": p.read_bytes() for p in sorted(sample_corpus.glob("*.pdf"))[:3]})

    def object_read(method: str, path: str) -> bool:
        return method == "GET" and path.startswith("/flaky/in/") and path.endswith(".pdf")

    faults = [
        Fault("SlowDown", object_read, 3),
        Fault("InternalError", object_read, 2),
        Fault("reset", object_read, 2),
    ]
    with FaultProxy(moto.url, faults) as proxy:
        report = run_index(cfg_for("s3://flaky/in", str(tmp_path / "index"), proxy.url, None, ["backend=local"]))
    assert dict(proxy.injected) == {"SlowDown": 3, "InternalError": 2, "reset": 2}
    assert report["files_this_run"]["indexed"] == 3 and report["files_failed_entirely"] == 0


def test_missing_bucket_and_denied_access_fail_fast(moto, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*source\.location"):
        run_index(cfg_for("s3://no-such-bucket/pdfs", str(tmp_path / "a"), moto.url, None))
    upload(s3(moto.url), "inputs", {"in/x.pdf": b"%PDF-1.4"})
    with pytest.raises(FileNotFoundError, match=r"does not exist.*output\.location"):
        run_index(cfg_for("s3://inputs/in", "s3://no-such-bucket/index", moto.url, moto.url))
    always = [Fault("AccessDenied", lambda method, path: True, None)]
    with FaultProxy(moto.url, always) as proxy, pytest.raises(PermissionError, match=r"access denied.*credentials"):
        run_index(cfg_for("s3://inputs/in", str(tmp_path / "b"), proxy.url, None))
