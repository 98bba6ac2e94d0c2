"""The index CLI on Ray with the tiny TEST model over the shared corpus: 31 real-world PDFs and a LICENSE."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_shared_corpus_every_file_accounted_and_the_encrypted_one_is_an_error(shared_corpus, tmp_path, model_cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PIPELINES_CACHE_DIR": str(model_cache)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.index",
            f"source.location={shared_corpus}",
            f"output.location={tmp_path}",
            "model=tiny",
            "ray.num_cpus=2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "run_report.json").read_text())
    everything = sorted(p.name for p in shared_corpus.iterdir())
    assert len(everything) == 32  # 31 PDFs and their LICENSE
    assert report["files_listed"] == 31
    assert [Path(u).name for u in report["files_skipped_by_suffix"]] == ["LICENSE"]
    assert report["files_unaccounted"] == []
    failed = {Path(e["source_uri"]).name: e["type"] for e in report["errors"]}
    assert failed["005-libreoffice-writer-password_libreoffice-writer-password.pdf"] == "encrypted"
    assert report["files_indexed"] + report["files_failed_entirely"] == 31
    assert report["files_indexed"] >= 29  # everything poppler can read is indexed
    assert report["pages_indexed"] > 150
