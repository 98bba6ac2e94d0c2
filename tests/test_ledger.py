"""The ledger's run protocol on synthetic part files: plan (and its sync limit), commit (and the versions it
records), visibility, recovery, compaction.

Workers are simulated by writing page/error blocks tagged with the run id, exactly as the pipeline's
sink does, so every outcome (complete, half-written, repeated, failed) can be set up precisely.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipelines import ids, index, io, schema
from pipelines.errors import ConfigError
from pipelines.index import ledger
from pipelines.index.writer import PartWriter
from pipelines.stages.compress import binarize


def write_source(root, name: str, content: bytes) -> io.SourceFile:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    [file], _ = io.list_inputs(str(path))
    return file


def file_doc_id(file: io.SourceFile) -> str:
    return ids.doc_id_from_bytes(io.read_bytes(file.uri))


def page_rows(file: io.SourceFile, pages: range, page_count: int) -> list[dict]:
    doc_id = file_doc_id(file)
    rng = np.random.default_rng(len(file.uri))
    rows = []
    for number in pages:
        vectors = rng.normal(size=(3, 128)).astype(np.float16)
        rows.append(
            {
                "page_id": ids.page_id(doc_id, number),
                "doc_id": doc_id,
                "source_uri": file.uri,
                "page_number": number,
                "page_count": page_count,
                "n_vectors_raw": 3,
                "n_vectors": 3,
                "embedding": vectors.tobytes(),
                "binary": binarize(vectors.astype(np.float32)).tobytes(),
            }
        )
    return rows


def error_row(file: io.SourceFile, error_type: str, page: int | None = None, page_count: int | None = None) -> dict:
    doc_id = file_doc_id(file)
    return {
        "source_uri": file.uri,
        "doc_id": doc_id,
        "page_number": page,
        "page_count": page_count,
        "error_stage": "rasterize",
        "error_type": error_type,
        "error_message": f"{error_type} here",
    }


def write(location: index.IndexLocation, rows: list[dict], run_id: str) -> None:
    PartWriter(location, "tiny", "cfg", run_id).write(schema.rows_to_table(rows))


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "src"
    location = index.IndexLocation(str(tmp_path / "index"))
    book = ledger.Ledger(location)
    book.check_config("tiny", "cfg", {"pool_factor": 3})
    return src, location, book


def visible_pages(location) -> list[str]:
    return sorted(location.read_pages(["page_id"]).column("page_id").to_pylist())


def test_only_complete_documents_commit_and_become_visible(setup):
    src, location, book = setup
    whole = write_source(src, "whole.pdf", b"%PDF whole")
    half = write_source(src, "half.pdf", b"%PDF half")
    broken = write_source(src, "broken.pdf", b"%PDF broken")
    partly = write_source(src, "partly.pdf", b"%PDF partly")
    plan = book.plan([whole, half, broken, partly], "run1")
    assert sorted(f.uri for f in plan.process) == sorted(f.uri for f in (whole, half, broken, partly))
    write(location, page_rows(whole, range(1, 3), 3), "run1")
    write(location, page_rows(whole, range(3, 4), 3), "run1")  # a second window, another part
    write(location, page_rows(half, range(1, 3), 5), "run1")  # pages 3-5 never arrive
    write(location, [error_row(broken, "corrupt")], "run1")
    write(location, [*page_rows(partly, [1], 2), error_row(partly, "pixel_cap", page=2, page_count=2)], "run1")
    assert visible_pages(location) == []  # nothing is visible before the commit

    summary = book.commit("run1")
    state = book.state()
    assert summary["incomplete"] == [half.uri]
    assert half.uri not in state
    assert (state[whole.uri]["status"], state[whole.uri]["pages"]) == ("indexed", 3)
    assert (state[broken.uri]["status"], state[broken.uri]["error_type"]) == ("failed", "corrupt")
    assert (state[partly.uri]["pages"], state[partly.uri]["page_errors"]) == (1, 1)
    pages = location.read_pages(["page_id", "source_uri"])
    assert set(pages.column("source_uri").to_pylist()) == {whole.uri, partly.uri}
    assert pages.num_rows == 4
    assert location.read_errors().column("error_type").to_pylist().count("corrupt") == 1

    # The next run redoes only the half-written document; its old rows stay invisible and are compacted away.
    plan = book.plan([whole, half, broken, partly], "run2")
    assert [f.uri for f in plan.process] == [half.uri] and len(plan.unchanged) == 3
    write(location, page_rows(half, range(1, 6), 5), "run2")
    book.commit("run2")
    assert len(visible_pages(location)) == 4 + 5
    counts = location.compact()
    assert counts["rows_dropped"] == 2
    raw = [
        pid
        for part in location.iter_parts("pages", schema.PAGES_TABLE_SCHEMA, ["page_id"])
        for pid in part.column(0).to_pylist()
    ]
    assert sorted(raw) == visible_pages(location)


def test_repeated_writes_count_once_and_compaction_removes_them(setup):
    src, location, book = setup
    doc = write_source(src, "doc.pdf", b"%PDF doc")
    book.plan([doc], "run1")
    rows = page_rows(doc, range(1, 4), 3)
    write(location, rows, "run1")
    write(location, rows, "run1")  # a retried Ray write task
    book.commit("run1")
    assert len(visible_pages(location)) == 3
    assert location.compact() == {"parts_rewritten": 0, "parts_deleted": 1, "rows_dropped": 3}
    assert len(location.part_files("pages")) == 1 and len(visible_pages(location)) == 3


def test_duplicates_moves_and_changes(setup):
    src, location, book = setup
    a = write_source(src, "a.pdf", b"%PDF same bytes")
    b = write_source(src, "b.pdf", b"%PDF other")
    plan = book.plan([a, b], "run1")
    write(location, page_rows(a, range(1, 3), 2) + page_rows(b, range(1, 2), 1), "run1")
    book.commit("run1")

    # Same bytes at a new path (and the old path gone): recorded as a duplicate, nothing to process.
    moved = write_source(src, "sub/a-moved.pdf", b"%PDF same bytes")
    (src / "a.pdf").unlink()
    hashed = []

    def counting_hash(uri):
        hashed.append(uri)
        return io.content_hash(uri)

    plan = book.plan([b, moved], "run2", sync=True, sync_root=io.location_uri(str(src)), hash_fn=counting_hash)
    assert plan.process == [] and [f.uri for f, _ in plan.aliases] == [moved.uri]
    assert plan.removes == [a.uri] and hashed == [moved.uri]  # b is unchanged; only the size-colliding file hashed
    book.commit("run2")
    pages = location.read_pages(["page_id", "source_uri"])
    assert sorted(pages.column("source_uri").to_pylist()) == [b.uri, moved.uri, moved.uri]  # shown at its new path
    assert book.state()[moved.uri]["duplicate_of"] == a.uri

    # Changed content at the same path: processed; the old document's pages leave the index.
    changed = write_source(src, "b.pdf", b"%PDF other, edited")
    plan = book.plan([changed, moved], "run3")
    assert [f.uri for f in plan.process] == [changed.uri]
    write(location, page_rows(changed, range(1, 3), 2), "run3")
    book.commit("run3")
    doc_ids = set(location.read_pages(["doc_id"]).column("doc_id").to_pylist())
    assert doc_ids == {ids.doc_id_from_bytes(b"%PDF same bytes"), ids.doc_id_from_bytes(b"%PDF other, edited")}


def test_retryable_errors_are_retried_and_others_only_on_request(setup):
    src, location, book = setup
    slow = write_source(src, "slow.pdf", b"%PDF slow")
    bad = write_source(src, "bad.pdf", b"%PDF bad")
    book.plan([slow, bad], "run1")
    write(location, [error_row(slow, "timeout"), error_row(bad, "encrypted")], "run1")
    book.commit("run1")
    assert [f.uri for f in book.plan([slow, bad], "run2").process] == [slow.uri]
    assert sorted(f.uri for f in book.plan([slow, bad], "run3", retry_failed=True).process) == [bad.uri, slow.uri]


def test_an_index_of_another_config_is_refused(setup):
    _, _, book = setup
    with pytest.raises(ConfigError, match=r"pool_factor.*output\.mode=overwrite"):
        book.check_config("tiny", "other", {"pool_factor": 2})


def test_interrupted_runs_are_committed_by_recovery(setup):
    src, location, book = setup
    done = write_source(src, "done.pdf", b"%PDF done")
    book.plan([done], "crashed")
    write(location, page_rows(done, range(1, 3), 2), "crashed")
    assert book.pending_runs() == ["crashed"]
    [summary] = book.recover()
    assert summary["by_status"] == {"indexed": 1} and book.pending_runs() == []
    assert len(visible_pages(location)) == 2
    assert book.plan([done], "next").process == []


def test_state_reads_only_new_ledger_parts_and_starts_over_when_the_ledger_is_cleared(setup, monkeypatch):
    src, location, book = setup
    first_doc = write_source(src, "a.pdf", b"%PDF a")
    second_doc = write_source(src, "b.pdf", b"%PDF b")
    book.plan([first_doc], "run1")
    write(location, page_rows(first_doc, range(1, 3), 2), "run1")
    book.commit("run1")
    book.commit("run1")  # committing twice appends the same rows again: still one row per source
    first = book.state()
    assert book.state() is first and list(first) == [first_doc.uri]

    # Another process commits a run; this ledger reads only the part it added, and callers holding the
    # earlier state keep it unchanged.
    other = ledger.Ledger(index.IndexLocation(location.location))
    other.plan([first_doc, second_doc], "run2")
    write(location, page_rows(second_doc, range(1, 2), 1), "run2")
    other.commit("run2")
    reads = []
    original = location.read_part
    monkeypatch.setattr(location, "read_part", lambda path, *a, **k: reads.append(path) or original(path, *a, **k))
    second = book.state()
    assert [ledger_part.rsplit("/", 2)[-2] for ledger_part in reads] == ["sources"] and len(reads) == 1
    assert list(first) == [first_doc.uri] and set(second) == {first_doc.uri, second_doc.uri}
    assert second[second_doc.uri]["commit_run"] == "run2" and second == other.state()
    monkeypatch.undo()

    # Shipped to a Ray worker (inside the part writer's location), the ledger leaves its cache behind.
    clone = pickle.loads(pickle.dumps(book))
    assert clone._latest == {} and clone._parts == [] and clone.state() == second
    location.clear_tables()  # overwrite mode
    assert book.state() == {}


def test_snapshot_merges_ledger_parts_without_changing_what_readers_see(setup, monkeypatch):
    src, location, book = setup
    docs = [write_source(src, f"d{i}.pdf", f"%PDF {i}".encode()) for i in range(4)]
    for number, doc in enumerate(docs):  # one run (one ledger part) per document, then one changing d0
        run_id = f"run{number}"
        book.plan(docs[: number + 1], run_id)
        write(location, page_rows(doc, range(1, 3), 2), run_id)
        book.commit(run_id)
    changed = write_source(src, "d0.pdf", b"%PDF 0 changed")
    book.plan([changed, *docs[1:]], "run4")
    write(location, page_rows(changed, range(1, 4), 3), "run4")
    book.commit("run4")
    before_state, before_pages = book.state(), visible_pages(location)
    assert len(location.part_files(ledger.SOURCES_DIR)) == 5 and book.snapshot_due(max_parts=4)

    # Killed between writing the snapshot and deleting what it replaces: rows twice, same state.
    def killed(name: str) -> None:
        if name == "snapshot_between_write_and_delete":
            raise SystemExit("killed")

    monkeypatch.setattr(ledger.failpoints, "hit", killed)
    with pytest.raises(SystemExit):
        book.snapshot("run5")
    monkeypatch.undo()
    fresh = ledger.Ledger(index.IndexLocation(location.location))
    assert len(location.part_files(ledger.SOURCES_DIR)) == 6 and fresh.state() == before_state

    counts = fresh.snapshot("run6")
    assert counts == {"ledger_parts_merged": 6, "ledger_sources": 4}
    assert len(location.part_files(ledger.SOURCES_DIR)) == 1 and not fresh.snapshot_due(max_parts=4)
    assert ledger.Ledger(index.IndexLocation(location.location)).state() == before_state == fresh.state()
    assert visible_pages(index.IndexLocation(location.location)) == before_pages
    # A reader whose cache predates the snapshot finds its parts gone and reads the snapshot instead.
    assert book.state() == before_state


def test_sync_refuses_to_remove_more_than_its_limit_unless_forced(setup):
    src, location, book = setup
    files = [write_source(src, f"doc{n}.pdf", f"%PDF doc {n}".encode()) for n in range(10)]
    book.plan(files, "run1")
    for file in files:
        write(location, page_rows(file, [1], 1), "run1")
    book.commit("run1")
    root = io.location_uri(str(src))

    one_gone = book.plan(files[1:], "run2", sync=True, sync_root=root)  # 1 of 10: within the default 0.1
    assert one_gone.removes == [files[0].uri]
    with pytest.raises(ledger.SyncRefused, match=r"remove 2 of the 10 files .*source\.sync_force=true"):
        book.plan(files[2:], "run3", sync=True, sync_root=root)
    assert "run3" not in book.pending_runs()  # refused before the plan was written
    forced = book.plan(files[2:], "run4", sync=True, sync_root=root, sync_force=True)
    assert forced.removes == [f.uri for f in files[:2]]
    assert book.plan(files[2:], "run5", sync=True, sync_root=root, sync_max_removed=0.2).removes == forced.removes


def test_a_file_rewritten_after_listing_is_not_recorded_with_the_listed_version(setup):
    src, location, book = setup
    listed = write_source(src, "doc.pdf", b"%PDF version one")
    book.plan([listed], "run1")
    rewritten = write_source(src, "doc.pdf", b"%PDF version two, longer")  # before the worker reads it
    write(location, page_rows(rewritten, [1], 1), "run1")  # the worker read the new bytes

    book.commit("run1", {f.uri: f.version for f in io.list_inputs(str(src))[0]})

    row = book.state()[listed.uri]
    assert row["doc_id"] == file_doc_id(rewritten) and row["source_version"] is None
    assert [f.uri for f in book.plan([rewritten], "run2").process] == [listed.uri]  # not skipped as unchanged
