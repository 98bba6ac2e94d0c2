"""Benchmark 8, scale: the driver's bookkeeping at 10k, 100k and 1M documents, without PDFs.

    python -m benchmarks scale --size 10000 100000 1000000

For each size ``N`` the benchmark builds an index through the real run protocol, with the workers
simulated: a synthetic object-store listing of ``N`` PDFs (an fsspec filesystem that answers ``find``
the way s3fs does, with sizes and ETags), and ``pages_per_doc`` page rows per document written as part
files tagged with the run, ``docs_per_part`` documents per part (what Ray's write tasks would have
written). Two runs are measured, each phase in isolation, for time and peak memory (growth of the
process's peak RSS over the phase):

- **first run**: all ``N`` documents are new;
- **rerun**: ``changed`` of them changed (new ETag) and ``added`` new ones appear, the usual nightly run.

Phases: ``listing`` (:func:`pipelines.io.list_inputs` over the listing; the store's own paging is not in
it), ``planning`` (:meth:`Ledger.plan`), ``commit`` (:meth:`Ledger.commit`), ``visible reads`` (the
visible pages' key columns, as the run report reads them: ledger state, visibility, every part file) and
``compaction`` (:meth:`Ledger.compaction_due`, :meth:`IndexLocation.compact`, marking runs compacted).
Every run is checked: every document visible exactly once, compaction dropping exactly the superseded
pages. Each phase records CPU seconds, wall seconds and peak MB; growth is computed from the CPU seconds
(the wall time of a one-process phase on a shared machine mostly measures the other processes), as the
exponent ``log(t2/t1) / log(N2/N1)`` between consecutive sizes and over the whole range (1 = linear), and as
time per document relative to the smallest size (the baseline of the ratios).

**Ledger history.** Each commit adds a ledger part file, so the first read of the ledger state in a new
process (every run's planning) reads every part ever written. After the two runs, ``history_parts`` more
parts are appended (each re-recording ``changed`` of the sources, as that many nightly runs would) and the
first state read is timed before and after :meth:`Ledger.snapshot` merges them into one part.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import tempfile
import time
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
from fsspec.spec import AbstractFileSystem

from benchmarks.common import check, peak_memory
from pipelines import io, schema
from pipelines.index.location import IndexLocation
from pipelines.index.storage import PAGES_DIR

PROTOCOL = "scalebench"
PHASES = ("listing", "planning", "commit", "visible_reads", "compaction")
RUNS = ("first_run", "rerun")
#: A phase whose time grows faster than this exponent between two sizes counts as superlinear.
LINEAR_EXPONENT = 1.25


class SyntheticListing(AbstractFileSystem):
    """A read-only object store holding ``documents`` PDFs under ``corpus/``; only listing is implemented.

    File ``i`` is ``corpus/<i // 1000>/doc<i>.pdf`` of ``100_000 + i`` bytes (sizes are unique, so the
    planner hashes nothing up front, as with real PDFs of distinct sizes); its ETag changes with
    ``version`` for every document ``i`` below ``changed`` (``changed`` documents were modified).
    """

    protocol = PROTOCOL
    cachable = False

    def __init__(self, documents: int = 0, changed: int = 0, version: str = "v1", **kwargs):
        super().__init__(**kwargs)
        self.documents, self.changed, self.version = documents, changed, version

    def _entries(self) -> Iterator[tuple[str, dict]]:
        for i in range(self.documents):
            name = f"corpus/{i // 1000:04d}/doc{i:07d}.pdf"
            tag = self.version if i < self.changed else "v0"
            etag = hashlib.md5(f"{tag}:{i}".encode()).hexdigest()
            yield name, {"name": name, "size": 100_000 + i, "type": "file", "ETag": f'"{etag}"'}

    def find(self, path, maxdepth=None, withdirs=False, detail=False, **kwargs):
        entries = dict(self._entries())
        return entries if detail else sorted(entries)

    def exists(self, path, **kwargs) -> bool:
        return self._strip_protocol(path).strip("/") == "corpus"

    def isfile(self, path) -> bool:
        return False


fsspec.register_implementation(PROTOCOL, SyntheticListing, clobber=True)


@contextlib.contextmanager
def measured(out: dict, phase: str) -> Iterator[None]:
    """Time a phase (CPU and wall seconds) and record its peak memory growth in ``out[phase]``.

    CPU seconds (this process, all its threads) are what the growth is computed from: on a shared machine
    the wall time of a single-process phase mostly measures how busy the other processes were.
    """
    with peak_memory() as memory:
        started, cpu_started = time.perf_counter(), time.process_time()
        yield
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak = memory["peak_bytes"]
    out[phase] = {
        "cpu_seconds": round(cpu_seconds, 4),
        "seconds": round(seconds, 4),
        "peak_mb": None if peak is None else round(peak / 2**20, 1),
    }


def page_parts(store: IndexLocation, files: list[io.SourceFile], run_id: str, pages_per_doc: int, docs_per_part: int):
    """Write what the workers would: ``pages_per_doc`` page rows per file, tagged with ``run_id``."""
    vector = np.random.default_rng(0).standard_normal((1, 128)).astype("<f2").tobytes()
    for start in range(0, len(files), docs_per_part):
        chunk = files[start : start + docs_per_part]
        n = len(chunk) * pages_per_doc
        doc_ids = [hashlib.sha256(f"{f.uri}|{f.version}".encode()).hexdigest()[:32] for f in chunk]
        columns = {
            "page_id": [f"{d}-p{p}" for d in doc_ids for p in range(1, pages_per_doc + 1)],
            "doc_id": [d for d in doc_ids for _ in range(pages_per_doc)],
            "source_uri": [f.uri for f in chunk for _ in range(pages_per_doc)],
            "page_number": [p for _ in chunk for p in range(1, pages_per_doc + 1)],
            "page_count": [pages_per_doc] * n,
            "n_vectors_raw": [1] * n,
            "n_vectors": [1] * n,
            "embedding": [vector] * n,
        }
        arrays = [
            pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
            for f in schema.PAGES_TABLE_SCHEMA
        ]
        store.write_part(PAGES_DIR, pa.Table.from_arrays(arrays, schema=schema.PAGES_TABLE_SCHEMA), tag=run_id)


def synthetic_digest(files: list[io.SourceFile]):
    """A content hash per listed URI that changes with the file's version, as a real one would."""
    versions = {f.uri: f.version for f in files}
    return lambda uri: hashlib.sha256(f"{uri}|{versions[uri]}".encode()).hexdigest()


def one_run(
    location: IndexLocation,
    listing: dict,
    run_id: str,
    pages_per_doc: int,
    docs_per_part: int,
) -> tuple[dict, dict]:
    """Measure the phases of one run over ``listing`` (storage options of :class:`SyntheticListing`)."""
    phases: dict = {}
    book = location.ledger
    with measured(phases, "listing"):
        files, _ = io.list_inputs(f"{PROTOCOL}://corpus", storage_options=listing)
    with measured(phases, "planning"):
        # Changed files keep their size, so the planner hashes them (is it a moved duplicate?); the synthetic
        # store has no bytes, so the digest is derived from the version (the read itself is not measured).
        plan = book.plan(files, run_id, hash_fn=synthetic_digest(files))
    started = time.perf_counter()
    page_parts(location, plan.process, run_id, pages_per_doc, docs_per_part)
    work_seconds = time.perf_counter() - started
    with measured(phases, "commit"):
        committed = book.commit(run_id)
    with measured(phases, "visible_reads"):
        pages = location.read_pages(["doc_id", "n_vectors", "n_vectors_raw"])
    with measured(phases, "compaction"):
        runs, tags = book.compaction_due()
        compaction = location.compact(tags)
        book.mark_compacted(runs, compaction)
    facts = {
        "listed": len(files),
        "processed": len(plan.process),
        "unchanged": len(plan.unchanged),
        "recorded": committed["recorded"],
        "visible_pages": pages.num_rows,
        "visible_documents": len(set(pages.column("doc_id").to_pylist())),
        "rows_dropped_by_compaction": compaction["rows_dropped"],
        "parts_rewritten": compaction["parts_rewritten"],
        "synthetic_work_seconds": round(work_seconds, 3),
    }
    return phases, facts


def ledger_history(location: IndexLocation, parts: int, changed: float) -> dict:
    """Append ``parts`` ledger parts re-recording ``changed`` of the sources each; time the first state read
    (a fresh :class:`Ledger`, as in a new process) with that history, the snapshot, and the read after it."""
    from pipelines.index.ledger import LEDGER_SCHEMA, SOURCES_DIR, Ledger

    latest = pa.concat_tables([location.read_part(p, LEDGER_SCHEMA) for p in location.part_files(SOURCES_DIR)])
    rows = max(1, round(latest.num_rows * changed))
    for k in range(parts):
        location.write_part(SOURCES_DIR, latest.slice((k * rows) % max(1, latest.num_rows - rows), rows), tag=f"h{k}")
    out: dict = {"ledger_part_files": len(location.part_files(SOURCES_DIR))}
    with measured(out, "state_read"):
        before = Ledger(IndexLocation(location.location)).state()
    with measured(out, "snapshot"):
        out["counts"] = Ledger(IndexLocation(location.location)).snapshot("snapshot")
    with measured(out, "state_read_after_snapshot"):
        after = Ledger(IndexLocation(location.location)).state()
    if before != after:
        raise AssertionError("the ledger snapshot changed the state")
    return out


def bench_size(
    n: int, changed: float, added: float, pages_per_doc: int, docs_per_part: int, root: str, history_parts: int = 0
) -> dict:
    """Both runs on a fresh index of ``n`` documents; every outcome checked against what was synthesized."""
    location = IndexLocation(os.path.join(root, f"index-{n}"))
    location.ledger.check_config("synthetic", "scale", {"benchmark": "scale"})
    n_changed, n_added = round(n * changed), round(n * added)
    first, first_facts = one_run(location, {"documents": n}, "first", pages_per_doc, docs_per_part)
    listing = {"documents": n + n_added, "changed": n_changed, "version": "v1"}
    rerun, rerun_facts = one_run(location, listing, "rerun", pages_per_doc, docs_per_part)
    expected = {
        "first_run": (n, n, 0, n * pages_per_doc, 0),
        "rerun": (
            n + n_added,
            n_changed + n_added,
            n - n_changed,
            (n + n_added) * pages_per_doc,
            n_changed * pages_per_doc,
        ),
    }
    for name, facts in (("first_run", first_facts), ("rerun", rerun_facts)):
        got = (
            facts["listed"],
            facts["processed"],
            facts["unchanged"],
            facts["visible_pages"],
            facts["rows_dropped_by_compaction"],
        )
        if got != expected[name] or facts["visible_documents"] != facts["listed"]:
            msg = f"scale benchmark {name} at {n} documents: got {got}, expected {expected[name]}"
            raise AssertionError(msg)
    out = {
        "documents": n,
        "first_run": first,
        "rerun": rerun,
        "facts": {"first_run": first_facts, "rerun": rerun_facts},
        "ledger_part_files": len(location.part_files("ledger/sources")),
        "page_part_files": len(location.part_files(PAGES_DIR)),
    }
    if history_parts:
        out["history"] = ledger_history(location, history_parts, changed)
    return out


def exponent(n1: int, t1: float, n2: int, t2: float) -> float:
    """``log(t2/t1) / log(n2/n1)``: 1 when time grows linearly with the documents."""
    return round(math.log(max(t2, 1e-4) / max(t1, 1e-4)) / math.log(n2 / n1), 3)


def growth(rows: list[dict]) -> dict:
    """Per run and phase, from CPU seconds: the time exponent between consecutive sizes and over the whole
    range (smallest to largest size), and CPU seconds per document relative to the smallest size (1.0 = the
    baseline's cost per document)."""
    out: dict = {}
    for run in RUNS:
        for phase in PHASES:
            times = [(row["documents"], row[run][phase]["cpu_seconds"]) for row in rows]
            exponents = [exponent(n1, t1, n2, t2) for (n1, t1), (n2, t2) in itertools.pairwise(times)]
            overall = exponent(*times[0], *times[-1]) if len(times) > 1 else None
            base = times[0][1] / times[0][0]
            per_doc = [round((t / n) / base, 3) if base > 0 else None for n, t in times]
            out[f"{run}.{phase}"] = {"exponents": exponents, "overall": overall, "per_document_vs_smallest": per_doc}
    return out


def bench_scale(
    sizes: tuple[int, ...] = (10_000, 100_000),
    changed: float = 0.01,
    added: float = 0.01,
    pages_per_doc: int = 2,
    docs_per_part: int = 1000,
    workdir: str | None = None,
    history_parts: int = 32,
) -> dict:
    """Time and peak memory of the driver's phases at each size (see the module docstring)."""
    sizes = tuple(sorted(sizes))
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir, prefix="scale-") as root:
        for n in sizes:
            rows.append(bench_size(n, changed, added, pages_per_doc, docs_per_part, root, history_parts))
    trend = growth(rows)
    worst = max((item["overall"] for item in trend.values() if item["overall"] is not None), default=None)
    checks = []
    if worst is not None:
        checks.append(
            check(
                "scale_linear",
                f"every phase grows about linearly from {sizes[0]:,} to {sizes[-1]:,} documents "
                f"(time exponent over the range <= {LINEAR_EXPONENT}; shown: {LINEAR_EXPONENT} / largest exponent)",
                round(LINEAR_EXPONENT / max(worst, 1e-9), 3),
                1.0,
                note=f"largest exponent {worst:.2f}",
            )
        )
    return {
        "params": {
            "sizes": list(sizes),
            "changed": changed,
            "added": added,
            "pages_per_doc": pages_per_doc,
            "docs_per_part": docs_per_part,
            "history_parts": history_parts,
        },
        "results": {"sizes": rows, "growth": trend, "largest_exponent": worst},
        "checks": checks,
    }


def _cell(measure: dict) -> str:
    return f"{measure['cpu_seconds']:.3g} ({measure['seconds']:.3g}) / {measure['peak_mb']}"


def report_section(result: dict, figures) -> str:
    """The report's section: seconds and peak MB per phase and size, and the growth exponents."""
    from benchmarks.report.common import _table

    rows = result["results"]["sizes"]
    header = ["run", "phase", *[f"{row['documents']:,} docs: CPU s (wall s) / peak MB" for row in rows]]
    header += ["exponents", "overall"]
    lines = []
    for run in RUNS:
        for phase in PHASES:
            cells = [_cell(row[run][phase]) for row in rows]
            trend = result["results"]["growth"][f"{run}.{phase}"]
            exponents = ", ".join(map(str, trend["exponents"]))
            lines.append([run.replace("_", " "), phase.replace("_", " "), *cells, exponents, trend.get("overall")])
    params = result["params"]
    note = (
        f"Synthetic listing and ledger, {params['pages_per_doc']} pages per document, "
        f"{params['docs_per_part']} documents per part file; the rerun has {params['changed']:.0%} changed and "
        f"{params['added']:.0%} new documents. Exponent: log(t2/t1) / log(N2/N1) between consecutive sizes "
        f"(1 = linear) of the CPU seconds; overall: from the smallest to the largest size.\n\n"
    )
    out = note + _table(header, lines)
    if all("history" in row for row in rows):
        phases = ("state_read", "snapshot", "state_read_after_snapshot")
        history = [
            [
                phase.replace("_", " "),
                *[_cell(row["history"][phase]) for row in rows],
            ]
            for phase in phases
        ]
        out += (
            f"\nLedger history: {params['history_parts']} more ledger parts (as many runs), then the first read of "
            f"the state in a new process, the snapshot merging them, and the read after it.\n\n"
            + _table(["ledger history", *header[2:-2]], history)
        )
    return out
