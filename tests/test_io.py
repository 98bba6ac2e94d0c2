"""Listing accounts for every file under a location, with or without a glob."""

import pytest

from pipelines import io


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
