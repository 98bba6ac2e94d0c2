"""The walkthrough notebook runs top to bottom on the session's sample corpus and index (TEST model).

It is executed with nbclient in a kernel of this interpreter (a kernel spec written for the test, so the
notebook sees the same environment), pointed at the session's fixtures through its ``WALKTHROUGH_*``
variables, and its results are checked against the index and the search code directly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from pipelines import evaluation
from pipelines.similarity_maps import read_record

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"
KERNEL = "pdf-visual-index-test"


def test_walkthrough_notebook_runs_on_the_sample_index(sample_index, sample_corpus, tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    out = tmp_path / "out"
    monkeypatch.setenv("WALKTHROUGH_CORPUS", str(sample_corpus))
    monkeypatch.setenv("WALKTHROUGH_INDEX", str(sample_index[0]))
    monkeypatch.setenv("WALKTHROUGH_OUT", str(out))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 3  # the similarity-map PNG, colpali-engine's one-token plot, the evaluation plot
    summary = json.loads(notebook.cells[-1].outputs[-1].text)

    # It used the session's index (not a new one); its hits and metrics are the search job's.
    from jobs.search import run_search
    from tests.helpers import compose_config

    assert summary["pages"] == 19
    rows = run_search(compose_config("search", [*cfg_overrides(sample_index, sample_corpus), "top_k=10"]))
    first = rows[0]["query"]
    assert summary["top_hits"] == [row["page_id"] for row in rows if row["query"] == first][:3]
    dataset = evaluation.load_dataset(str(sample_corpus), tmp_path / "dataset")
    by_text = {text: qid for qid, text in dataset.queries.items()}
    ranked: dict[str, list[str]] = {}
    for row in rows:
        corpus_id = evaluation.page_corpus_id(sample_corpus, row["source_uri"], row["page_number"])
        ranked.setdefault(by_text[row["query"]], []).append(corpus_id)
    assert summary["metrics"]["two_phase"] == evaluation.compute_metrics(dataset.qrels, ranked)[0]
    record = read_record(Path(summary["map"]).with_suffix(".json"))
    assert record["page_id"] == summary["top_hits"][0] and summary["map_tokens"] == record["maps"].shape[0]
    assert Path(summary["map"]).stat().st_size > 10_000 and Path(summary["plot"]).stat().st_size > 10_000
    assert set(summary["metrics"]) == {"two_phase", "binary", "float", "chance"}
    for values in summary["metrics"].values():
        assert set(values) == set(evaluation.METRIC_NAMES) and all(0.0 <= v <= 1.0 for v in values.values())


def cfg_overrides(sample_index, sample_corpus) -> list[str]:
    return [f"index={sample_index[0]}", f"queries_file={sample_corpus / 'queries.jsonl'}"]
