"""The deploy job: in-process (exit statuses) and as users run it (writes both packages)."""

from __future__ import annotations

from jobs import deploy_vespa
from pipelines.vespa.deploy import DIRS
from tests.helpers import compose_config, run_cli


def deploy_config(*overrides: str):
    return compose_config("deploy_vespa", overrides)


def test_run_returns_exit_statuses_instead_of_exiting(tmp_path, capsys):
    assert deploy_vespa.run(deploy_config(f"output_dir={tmp_path}", "topology=ring")) == 2
    assert "topology must be one of" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing is written before the config is validated"
    unreachable = deploy_config(f"output_dir={tmp_path}", "config_server=http://127.0.0.1:9", "wait_s=0")
    assert deploy_vespa.run(unreachable) == 1
    assert "cannot reach config server" in capsys.readouterr().err


def test_cli_writes_every_topology(tmp_path):
    result = run_cli("jobs.deploy_vespa", f"output_dir={tmp_path}", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for directory in DIRS.values():
        assert (tmp_path / directory / "services.xml").is_file()
        assert f"wrote {tmp_path / directory / 'services.xml'}" in result.stdout
