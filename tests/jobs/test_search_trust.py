"""An index's stored config never decides to run code: ``trust_remote_code`` is the user's setting alone.

The checkpoint here is a directory whose ``config.json`` maps the Auto classes to a module shipped next to it,
as a ``remote_code`` checkpoint (jina-embeddings-v4) does; importing that module writes a marker file. The
marker exists only if transformers was called with ``trust_remote_code=True``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

from omegaconf import OmegaConf

from pipelines.index import CONFIG_FILE
from tests.helpers import compose_config, run_cli


def code_checkpoint(root, marker) -> str:
    root.mkdir()
    auto_map = {name: f"shipped.{name}Class" for name in ("AutoConfig", "AutoModel", "AutoProcessor")}
    (root / "config.json").write_text(json.dumps({"model_type": "shipped", "auto_map": auto_map}))
    (root / "shipped.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    return str(root)


def test_a_foreign_index_naming_a_remote_code_model_does_not_get_its_code_run(sample_index, tmp_path):
    from jobs.search import run

    marker = tmp_path / "code-ran"
    foreign = tmp_path / "foreign-index"
    shutil.copytree(sample_index[0], foreign)
    stored = OmegaConf.create((foreign / CONFIG_FILE).read_text())
    stored.model.name = "jina-v4"  # a remote-code family, with a path of the index author's choosing
    stored.model.name_or_path = code_checkpoint(tmp_path / "checkpoint", marker)
    OmegaConf.update(stored, "model.trust_remote_code", True, force_add=True)  # the index cannot switch it on
    (foreign / CONFIG_FILE).write_text(OmegaConf.to_yaml(stored))

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = run(compose_config("search", [f"index={foreign}", "query=revenue"]))
    assert status == 2 and "add model.trust_remote_code=true" in stderr.getvalue()
    assert not marker.exists()

    # The user's own setting on the command line does run it (so the marker above would have shown the code ran).
    args = [f"index={foreign}", "query=revenue", "model.trust_remote_code=true"]
    run_cli("jobs.search", *args, env={"HF_MODULES_CACHE": str(tmp_path / "modules")}, timeout=300)
    assert marker.read_text() == "ran"
