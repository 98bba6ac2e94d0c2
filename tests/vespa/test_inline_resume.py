"""Feeding inline, the index job is killed mid-run; the rerun leaves Vespa holding exactly the index.

Pages fed before the kill stay (deterministic ids make re-puts overwrites); pages written but never
acknowledged are fed by the rerun's closing resume replay, driven by the feed log.
"""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from pipelines import index
from tests.helpers import run_python
from tests.vespa.conftest import vespa_id
from tests.vespa.fake_vespa import FakeVespa
from tests.vespa.schema_check import validator


@pytest.mark.slow
def test_killed_inline_feed_is_completed_by_the_rerun(sample_corpus, tmp_path, model_cache):
    source = tmp_path / "src"
    source.mkdir()
    for pdf in sample_corpus.glob("*.pdf"):
        shutil.copy(pdf, source / pdf.name)
    out = tmp_path / "index"
    with FakeVespa(validator=validator()) as server:
        args = [
            "-m",
            "jobs.index",
            "model=tiny",
            "backend=local",
            "rasterize.window_pages=2",
            f"source.location={source}",
            f"output.location={out}",
            "vespa.inline=true",
            f"vespa.endpoint.url={server.url}",
        ]
        killed = run_python(args, env={"PIPELINES_FAILPOINTS": "after_write_block:3"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        fed_before = set(server.documents)
        assert 0 < len(fed_before) < 19

        rerun = run_python(args)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        report = json.loads((out / "run_report.json").read_text())
        page_ids = index.IndexLocation(str(out)).read_pages(["page_id"]).column("page_id").to_pylist()
        assert len(page_ids) == len(set(page_ids)) == 19
        assert set(server.documents) == {vespa_id(p) for p in page_ids}
        assert report["vespa"]["complete"] and not server.errors
