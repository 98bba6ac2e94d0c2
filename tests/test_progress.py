"""Progress lines: counted from the blocks the writer writes, printed at a fixed interval when stderr is
not a terminal, with a summary at the end and the same counters as a Prometheus text file.

The Ray backend's relay (write tasks -> queue actor -> driver) is exercised by the multi-node test
(tests/test_ray_cluster.py), which reads the lines from the submitted job's log.
"""

from __future__ import annotations

import io
import re
import shutil
import time

import pyarrow as pa
import pytest
from reportlab.pdfgen.canvas import Canvas

from jobs.index import run
from pipelines import schema
from pipelines.progress import Progress, ProgressConfig, ProgressReporter, ProgressWriter, block_delta
from tests.helpers import index_config

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ progress: files (\d+)/(\d+) \((\d+) failed\), pages (\d+)/(\S+)(?: \(\d+%\))?, "
    r"([\d.]+) pages/s, ETA (\S+), errors (\d+)$"
)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def block(rows: list[tuple[str, int | None, int | None, str | None]]) -> pa.Table:
    """Page records ``(source_uri, page_number, page_count, error_type)``, in the writer's block schema."""
    records = [
        {"source_uri": uri, "doc_id": uri[-1], "page_number": n, "page_count": count, "error_type": error}
        for uri, n, count, error in rows
    ]
    return schema.conform(pa.Table.from_pylist(records))


def test_counts_files_pages_estimate_and_eta_from_written_blocks():
    clock = Clock()
    progress = Progress(files_planned=4, clock=clock)
    written = []
    writer = ProgressWriter(lambda b: written.append(b.num_rows) or {"pages": b.num_rows}, progress.add)
    assert progress.snapshot()["pages_planned_estimate"] == -1 and "pages 0/?" in progress.line()

    clock.now = 110.0
    assert writer(block([("s3://b/a", 1, 4, None), ("s3://b/a", 2, 4, None)])) == {"pages": 2}
    clock.now = 112.0
    writer(block([("s3://b/a", 3, 4, None), ("s3://b/a", 4, 4, "render_failed")]))  # a page error completes it
    writer(block([("s3://b/a", 3, 4, None)]))  # a retried write: not a second file
    writer(block([("s3://b/f", None, None, "corrupt")]))  # a document-level error
    clock.now = 114.0
    writer(block([("s3://b/c", 1, 2, None)]))
    s = progress.snapshot()
    assert written == [2, 2, 1, 1, 1]
    assert (s["files_done"], s["files_failed"], s["files_planned"]) == (2, 1, 4)
    assert (s["pages_done"], s["error_rows"]) == (5, 2)
    # Known page counts 4 + 0 + 2 over 3 started files, plus their mean for the 1 file not started.
    assert s["pages_planned_estimate"] == 8
    assert s["pages_per_second"] == pytest.approx(5 / 4)  # since the first block (t=110), not the start
    assert s["eta_seconds"] == pytest.approx((8 - 5 - 2) / (5 / 4))
    assert s["elapsed_seconds"] == pytest.approx(14.0)
    assert "files 2/4 (1 failed), pages 5/≈8 (88%), 1.25 pages/s, ETA 1s, errors 2" in progress.line()

    text = progress.prometheus({"run_id": "r1"})
    values = dict(re.findall(r'^pdf_index_(\w+)\{run_id="r1"\} (\S+)$', text, re.M))
    assert float(values["files_done"]) == 2 and float(values["pages_planned_estimate"]) == 8
    assert text.count("# TYPE") == len(values) == 9


def test_a_failing_relay_never_fails_the_write():
    def broken(delta):
        raise ConnectionError("relay gone")

    writer = ProgressWriter(lambda b: {"pages": b.num_rows}, broken)
    assert writer(block([("s3://b/a", 1, 1, None)])) == {"pages": 1}
    assert block_delta(block([("s3://b/a", 1, 1, None)]))["sources"] == {"s3://b/a": [1, [1], False]}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_reporter_prints_at_its_interval_only_when_not_a_terminal(tmp_path):
    metrics = tmp_path / "metrics" / "index.prom"
    progress = Progress(files_planned=1)
    stream = io.StringIO()
    config = ProgressConfig(interval_s=0.02, metrics_file=str(metrics))
    with ProgressReporter(progress, config, stream=stream, labels={"run_id": "r1"}) as reporter:
        progress.add(block_delta(block([("file:///a", 1, 1, None)])))
        deadline = 200
        while stream.getvalue().count("\n") < 3 and deadline:
            deadline -= 1
            time.sleep(0.01)
        reporter.totals = {"pages": 1, "error_rows": 0}
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(LINE.match(line) for line in lines[:-1])
    assert re.search(r"progress done: files 1/1 \(0 failed\), pages 1, error rows 0 in [\d.]+s", lines[-1])
    assert 'pdf_index_files_done{run_id="r1"} 1' in metrics.read_text()

    terminal = Tty()
    with ProgressReporter(Progress(files_planned=1), ProgressConfig(interval_s=0.01), stream=terminal):
        time.sleep(0.05)
    assert terminal.getvalue() == ""  # a terminal shows Ray Data's bars instead
    with pytest.raises(ValueError, match="interval_s"):
        ProgressConfig(interval_s=0)


def test_non_tty_index_run_logs_progress_lines(sample_index, sample_corpus, tiny_model_dir, tmp_path, capsys):
    source, out = tmp_path / "source", tmp_path / "index"
    shutil.copytree(sample_corpus, source)
    shutil.copytree(sample_index[0], out)
    canvas = Canvas(str(source / "new_memo.pdf"))  # the one file this rerun processes
    canvas.drawString(72, 720, "Memo: progress lines for the logs")
    canvas.save()
    metrics = tmp_path / "index.prom"
    cfg = index_config(
        f"source.location={source}",
        f"output.location={out}",
        "backend=local",
        "progress.interval_s=0.05",
        f"progress.metrics_file={metrics}",
    )
    assert run(cfg) == 0
    err = capsys.readouterr().err  # pytest's capture: not a terminal
    lines = [line for line in err.splitlines() if " progress" in line]
    assert any(LINE.match(line) and LINE.match(line).group(2) == "1" for line in lines), err[-2000:]
    assert re.search(r"progress done: files 1/1 \(0 failed\), pages 1, error rows 0", lines[-1]), lines[-1]
    assert re.search(r"^pdf_index_pages_done\{.*\} 1$", metrics.read_text(), re.M)
