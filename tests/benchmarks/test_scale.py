"""The scale benchmark at tiny sizes: the synthetic listing lists what it should, both runs end exactly-once
(the benchmark checks every run and raises otherwise), and the figures and report section are complete."""

from __future__ import annotations

from benchmarks import cli, scale
from pipelines import io


def test_synthetic_listing_is_what_list_inputs_sees():
    files, skipped = io.list_inputs(
        f"{scale.PROTOCOL}://corpus", storage_options={"documents": 1500, "changed": 3, "version": "v1"}
    )
    assert len(files) == 1500 and skipped == []
    assert files[0].uri == "scalebench://corpus/0000/doc0000000.pdf" and files[0].size == 100_000
    again, _ = io.list_inputs(f"{scale.PROTOCOL}://corpus", storage_options={"documents": 1500})
    changed = [a.uri for a, b in zip(files, again, strict=True) if a.version != b.version]
    assert changed == [f.uri for f in files[:3]]  # only the changed documents get a new ETag


def test_scale_benchmark_runs_end_exactly_once_and_report_every_phase(tmp_path):
    result = scale.bench_scale(sizes=(300, 1200), docs_per_part=100, workdir=str(tmp_path), history_parts=3)
    rows = result["results"]["sizes"]
    assert [row["documents"] for row in rows] == [300, 1200]
    big = rows[1]
    assert big["facts"]["rerun"]["processed"] == 24 and big["facts"]["rerun"]["unchanged"] == 1188
    assert big["facts"]["rerun"]["rows_dropped_by_compaction"] == 12 * 2  # the changed documents' old pages
    assert big["ledger_part_files"] == 2 and big["page_part_files"] == 12 + 1  # compaction rewrote what it had to
    for run in scale.RUNS:
        for phase in scale.PHASES:
            assert big[run][phase]["seconds"] > 0
            assert len(result["results"]["growth"][f"{run}.{phase}"]["exponents"]) == 1
    [linear] = result["checks"]
    assert linear["id"] == "scale_linear" and linear["value"] > 0
    # Three more ledger parts, merged with the two runs' into one snapshot; the state read is unchanged.
    assert big["history"]["ledger_part_files"] == 5
    assert big["history"]["counts"] == {"ledger_parts_merged": 5, "ledger_sources": 1212}
    section = scale.report_section(result, tmp_path)
    table_rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(table_rows) == (1 + len(scale.RUNS) * len(scale.PHASES)) + (1 + 3)
    assert "scale" in cli.BENCHMARKS and cli.DEFAULT_SIZES["scale"] == [10_000, 100_000]
