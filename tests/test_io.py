"""Listing accounts for every file under a location, with or without a glob; it follows links, never loops,
fails on a directory it cannot list, and gives names that are not UTF-8 URIs that map back to the bytes; through
the job, such names and linked PDFs are indexed and an unlistable directory stops the run before any work."""

import os
import shutil

import pyarrow as pa
import pytest

from jobs.index import EXIT_SOURCE_INCOMPLETE, run
from pipelines import io
from pipelines.driver import run_index
from pipelines.index import IndexLocation
from pipelines.testing.corpus import EXPECTED_PAGE_COUNTS
from tests.helpers import index_config


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "a" / "TWO.PDF").write_bytes(b"%PDF-1.4 two")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "b.pdf").write_bytes(b"%PDF-1.4 b")
    return tmp_path


def test_directory_listing_is_recursive_case_insensitive_and_reports_skipped(tree):
    files, skipped = io.list_inputs(str(tree))
    assert [f.uri.rsplit("/", 1)[1] for f in files] == ["TWO.PDF", "one.pdf", "b.pdf"]
    assert all(f.uri.startswith("file://") for f in files)
    assert {f.uri: f.size for f in files}[(tree / "b.pdf").as_uri()] == len(b"%PDF-1.4 b")
    assert all(f.version.startswith("mtime:") for f in files)
    assert [uri.rsplit("/", 1)[1] for uri in skipped] == ["notes.txt"]


def test_glob_listing_reports_what_it_skips(tree):
    files, skipped = io.list_inputs(str(tree), glob="a/*")
    assert sorted(f.uri.rsplit("/", 1)[1] for f in files) == ["TWO.PDF", "one.pdf"]
    assert [uri.rsplit("/", 1)[1] for uri in skipped] == ["notes.txt"]


def test_single_file_and_missing_location(tree):
    [single], skipped = io.list_inputs(str(tree / "b.pdf"))
    assert (single.uri, single.size, skipped) == ((tree / "b.pdf").as_uri(), 10, [])
    with pytest.raises(FileNotFoundError, match=r"source\.location"):
        io.list_inputs(str(tree / "missing"))


def test_read_bytes_refuses_oversized_objects(tree):
    assert io.read_bytes((tree / "b.pdf").as_uri()) == b"%PDF-1.4 b"
    with pytest.raises(io.FileTooLarge, match="max_file_bytes"):
        io.read_bytes((tree / "b.pdf").as_uri(), max_bytes=3)


def test_links_are_followed_and_directory_loops_end(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.pdf").write_bytes(b"%PDF-1.4 real")
    (tmp_path / "linked.pdf").symlink_to(tmp_path / "docs" / "real.pdf")
    (tmp_path / "docs" / "loop").symlink_to(tmp_path / "docs")  # a loop: walking it naively never ends
    (tmp_path / "docs" / "up").symlink_to(tmp_path)  # a second loop, through the root
    (tmp_path / "alias").symlink_to(tmp_path / "docs")  # listed once, at the path without a link
    (tmp_path / "dangling.pdf").symlink_to(tmp_path / "gone.pdf")
    (tmp_path / "self.pdf").symlink_to(tmp_path / "self.pdf")  # a link that loops on itself
    os.mkfifo(tmp_path / "pipe.pdf")  # reading it would block: skipped, never read

    files, skipped = io.list_inputs(str(tmp_path))

    by_name = {f.uri.removeprefix(tmp_path.as_uri() + "/"): f for f in files}
    assert sorted(by_name) == ["dangling.pdf", "docs/real.pdf", "linked.pdf", "self.pdf"]
    assert skipped == [(tmp_path / "pipe.pdf").as_uri()]
    assert by_name["linked.pdf"].size == len(b"%PDF-1.4 real")  # the target's size and version
    assert by_name["linked.pdf"].version == by_name["docs/real.pdf"].version
    # Links that cannot be followed are listed (their read fails and is recorded), with a version that
    # changes once the target exists.
    assert by_name["dangling.pdf"].version == "unreadable:ENOENT"
    assert by_name["self.pdf"].version == "unreadable:ELOOP"


def test_directory_that_cannot_be_listed_fails_the_job_before_any_work(tmp_path, capsys):
    """A real OS error on one directory (ENAMETOOLONG: deeper than PATH_MAX) fails the listing, and the job exits 7
    before it touches the index; fsspec's walk would leave the directory out (with source.sync, its files would
    count as deleted)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "top.pdf").write_bytes(b"%PDF-1.4 top")
    fd = os.open(source, os.O_RDONLY)
    try:
        for _ in range(4200 // 200):  # each level is a 200-character name: past PATH_MAX (4096) from the root
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        deep = os.open("deep.pdf", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(deep, b"%PDF-1.4 deep")
        os.close(deep)
    finally:
        os.close(fd)
    with pytest.raises(io.ListingIncomplete, match=r"could not list .*ENAMETOOLONG.*source\.location"):
        io.list_inputs(str(source))

    cfg = index_config(f"source.location={source}", f"output.location={tmp_path / 'index'}", "source.sync=true")
    assert run(cfg) == EXIT_SOURCE_INCOMPLETE == 7
    assert "ENAMETOOLONG" in capsys.readouterr().err and not (tmp_path / "index").exists()


def test_names_that_are_not_utf8_round_trip_to_the_bytes_on_disk(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9 100%.pdf"  # Latin-1, not UTF-8
    with open(raw, "wb") as handle:
        handle.write(b"%PDF-1.4 latin")
    (tmp_path / "plain 100%.pdf").write_bytes(b"%PDF-1.4 plain")

    files, _ = io.list_inputs(str(tmp_path))

    uris = sorted(f.uri for f in files)
    assert uris == [f"{tmp_path.as_uri()}/caf%E9 100%25.pdf", f"{tmp_path.as_uri()}/plain 100%.pdf"]
    pa.array(uris, pa.string())  # valid UTF-8: Arrow (the ledger, the plan) can hold them
    assert [io.read_bytes(uri) for uri in uris] == [b"%PDF-1.4 latin", b"%PDF-1.4 plain"]
    assert io.filesystem_for(uris[0])[1] == os.fsdecode(raw)


def test_a_name_that_is_not_utf8_and_a_linked_pdf_are_indexed(tmp_path, sample_corpus, tiny_model_dir):
    """Through the job: a name that is not UTF-8 used to abort the run (UnicodeEncodeError building the ledger
    table) and a linked PDF was left out unnoticed. Both are indexed, and the rerun finds them unchanged."""
    one, two = sorted(sample_corpus.glob("*.pdf"))[:2]
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(one, os.fsencode(source) + b"/r\xe9sum\xe9.pdf")
    (source / "linked.pdf").symlink_to(two)
    cfg = index_config(f"source.location={source}", f"output.location={tmp_path / 'index'}", "backend=local")

    report = run_index(cfg)

    assert report["files_this_run"]["indexed"] == 2 and report["files_unaccounted"] == []
    assert report["pages_indexed"] == EXPECTED_PAGE_COUNTS[one.name] + EXPECTED_PAGE_COUNTS[two.name]
    pages = IndexLocation(str(tmp_path / "index")).read_pages(["source_uri"])
    assert set(pages.column("source_uri").to_pylist()) == {
        f"{source.as_uri()}/r%E9sum%E9.pdf",
        f"{source.as_uri()}/linked.pdf",
    }
    again = run_index(cfg)
    assert again["pages_embedded"] == 0 and again["files_this_run"]["unchanged"] == 2
