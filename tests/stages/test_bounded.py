"""Bounded children: capped output, killed at the timeout, a memory limit told apart from other failures."""

import sys
import time

import pytest

from pipelines.render.bounded import (
    PRLIMIT,
    STDERR_KEEP,
    ChildTimeout,
    limited_command,
    over_memory_limit,
    run_bounded,
)


def test_output_is_capped_however_much_the_child_writes():
    code = "import sys; sys.stderr.write('w' * 20_000_000); sys.stdout.write('o' * 5_000_000)"
    result = run_bounded([sys.executable, "-c", code], timeout=30, memory_limit=None, stdout_cap=1000)
    assert result.returncode == 0
    assert len(result.stderr) == STDERR_KEEP and result.stderr_bytes == 20_000_000
    assert len(result.stdout) == 1000 and result.stdout_truncated
    assert "more bytes of stderr dropped" in result.stderr_text


def test_a_child_over_its_memory_limit_is_recognised():
    code = "x = bytearray(1_500_000_000)"
    result = run_bounded([sys.executable, "-c", code], timeout=30, memory_limit=512 * 2**20, stdout_cap=100)
    assert result.returncode != 0 and result.over_memory_limit
    unlimited = run_bounded([sys.executable, "-c", "raise SystemExit(3)"], 30, 512 * 2**20, 100)
    assert unlimited.returncode == 3 and not unlimited.over_memory_limit
    assert over_memory_limit(-11, b"", 2**30) and not over_memory_limit(-11, b"", None)


def test_a_child_past_its_timeout_is_killed():
    started = time.monotonic()
    with pytest.raises(ChildTimeout):
        run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], 0.5, None, 100)
    assert time.monotonic() - started < 10


def test_the_limit_is_set_in_the_child_without_forking_the_job_through_a_preexec_hook():
    code = "import resource; print(*resource.getrlimit(resource.RLIMIT_AS))"
    result = run_bounded([sys.executable, "-c", code], timeout=30, memory_limit=300 * 2**20, stdout_cap=100)
    assert result.stdout.split() == [str(300 * 2**20).encode()] * 2  # soft and hard
    assert result.args == [sys.executable, "-c", code]  # messages name the tool, not the wrapper
    command, preexec = limited_command(["pdftoppm", "-v"], 2**30)
    assert command[-2:] == ["pdftoppm", "-v"]
    assert (preexec is None) == (PRLIMIT is not None)  # prlimit when installed (util-linux): vfork, no preexec_fn
    assert limited_command(["pdftoppm"], None) == (["pdftoppm"], None)


#: Credentials a job's environment holds (S3, Vespa, the hub): none may reach a child that parses untrusted PDFs.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIA-test-id",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "AWS_SESSION_TOKEN": "aws-session-value",
    "VESPA_CLOUD_SECRET_TOKEN": "vespa-token-value",
    "VESPA_CLIENT_KEY": "-----BEGIN PRIVATE KEY-----vespa-key-value",
    "HF_TOKEN": "hf-token-value",
    "SOME_NEW_SERVICE_PASSWORD": "new-secret-value",  # an allow-list keeps out what nobody thought of
}


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [item.decode().partition("=") for item in handle.read().split(b"\0") if item]
    return {name: value for name, _, value in pairs}


@pytest.mark.parametrize("memory_limit", [None, 512 * 2**20])
def test_bounded_children_get_no_secrets_from_the_jobs_environment(monkeypatch, memory_limit):
    for name, value in {**SECRETS, "LC_ALL": "C.UTF-8", "FONTCONFIG_PATH": "/etc/fonts"}.items():
        monkeypatch.setenv(name, value)
    result = run_bounded(["env", "-0"], timeout=30, memory_limit=memory_limit, stdout_cap=1 << 20)
    env = dict(item.decode().partition("=")[::2] for item in result.stdout.split(b"\0") if item)
    assert not SECRETS.keys() & env.keys()
    assert not any(value in result.stdout.decode() for value in SECRETS.values())
    assert env["PATH"] and env["LC_ALL"] == "C.UTF-8" and env["FONTCONFIG_PATH"] == "/etc/fonts"


def test_the_pdfium_worker_gets_no_secrets_and_still_renders(monkeypatch, sample_corpus):
    from pipelines.render.pdfium import PdfiumWorker

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    worker = PdfiumWorker(memory_limit=1 << 30)
    try:
        pdf = min(sample_corpus.glob("*.pdf"), key=lambda p: p.stat().st_size)
        info = worker.open(pdf, timeout=60)
        env = environ_of(worker.pid)
        [image] = worker.render(pdf, 1, 1, (100, 120), info.sizes[0], timeout=60)
    finally:
        worker.close()
    assert not SECRETS.keys() & env.keys() and not set(SECRETS.values()) & set(env.values())
    assert env["PATH"] and "PYTHONPATH" in env and image.size[0] <= 100
