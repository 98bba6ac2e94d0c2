"""Secrets never reach what a job prints or stores (pipelines.redaction): configs, run reports, logs, errors."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil

from omegaconf import OmegaConf

from pipelines.redaction import RedactingFilter, redact, redact_text
from tests.helpers import index_config, run_cli

TOKEN = "tok-7Hq2-secret"


def test_redact_covers_headers_url_userinfo_and_what_it_covered_before():
    cfg = {
        "client_kwargs": {
            "endpoint_url": "http://minio-user:minio-pw@minio:9000",
            "headers": {
                "Authorization": f"Bearer {TOKEN}",
                "Proxy-Authorization": "Basic YWxpY2U6aHVudGVyMg==",
                "Cookie": "session=c00kie",
                "X-Api-Key": "k3y",
                "Accept": "application/pdf",
            },
        },
        "location": "ftp://alice:hunter2@files.example.com/pdfs",
        "presigned": "https://b.s3.amazonaws.com/a.pdf?X-Amz-Credential=AKIA&X-Amz-Signature=5ig&x=1",
        # what redact() covered before: secret-looking keys, but not the names of environment variables
        "vespa": {"token": "abc", "token_env": "VESPA_CLOUD_SECRET_TOKEN", "url": "http://x", "max_query_tokens": 64},
        "storage": {"aws_secret_access_key": "s", "account_key": "k", "key_env": "K", "anon": False, "key": ""},
        "list": [{"password": "pw"}, "https://u:p@h/x"],
    }
    out = redact(cfg)
    headers = out["client_kwargs"]["headers"]
    assert headers == {
        "Authorization": "***",
        "Proxy-Authorization": "***",
        "Cookie": "***",
        "X-Api-Key": "***",
        "Accept": "application/pdf",
    }
    assert out["client_kwargs"]["endpoint_url"] == "http://***@minio:9000"
    assert out["location"] == "ftp://***@files.example.com/pdfs"
    assert out["presigned"] == "https://b.s3.amazonaws.com/a.pdf?X-Amz-Credential=AKIA&X-Amz-Signature=***&x=1"
    assert out["vespa"] == {
        "token": "***",
        "token_env": "VESPA_CLOUD_SECRET_TOKEN",
        "url": "http://x",
        "max_query_tokens": 64,
    }
    assert out["storage"] == {
        "aws_secret_access_key": "***",
        "account_key": "***",
        "key_env": "K",
        "anon": False,
        "key": "",
    }
    assert out["list"] == [{"password": "***"}, "https://***@h/x"]
    for secret in (TOKEN, "YWxpY2U6aHVudGVyMg", "c00kie", "k3y", "minio-pw", "hunter2", "5ig", "abc"):
        assert secret not in repr(out), secret


def test_redact_text_covers_headers_and_tokens_in_free_text():
    text = (
        f"GET failed: headers {{'Authorization': 'Bearer {TOKEN}', 'Accept': '*/*'}}\n"
        "Cookie: a=b; c=d\nx-api-key=k3y, then http://bob:pw%40x@host:8080/p and ?sig=S1G&sv=2020 "
        "and a bare bearer abcdefgh12345678"
    )
    out = redact_text(text, secrets=["d;", None])
    assert TOKEN not in out and "'Authorization': '***'" in out and "'Accept': '*/*'" in out
    assert "Cookie: ***" in out and "x-api-key=***" in out and "k3y" not in out
    assert "http://***@host:8080/p" in out and "bob" not in out
    assert "?sig=***&sv=2020" in out and "bearer ***" in out
    # Text without secrets is left as it is.
    plain = "page 3 of s3://bucket/a.pdf: render_failed (Basic information missing), key=value"
    assert redact_text(plain) == plain


def test_log_lines_and_their_tracebacks_are_redacted():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("tests.redaction")
    log.addHandler(handler)
    try:
        log.warning("reading %s", "https://alice:hunter2@host/a.pdf")
        try:
            msg = f"401 for Authorization: Bearer {TOKEN}"
            raise OSError(msg)
        except OSError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    assert "hunter2" not in stream.getvalue() and TOKEN not in stream.getvalue()
    assert "https://***@host/a.pdf" in stream.getvalue() and "Authorization: ***" in stream.getvalue()


def test_job_errors_and_logs_never_print_url_credentials(tmp_path):
    """A location with user information: the job's error (and every log line) names it without them."""
    result = run_cli(
        "jobs.index",
        "source.location=http://alice:hunter2@127.0.0.1:9/pdfs/",
        f"output.location={tmp_path / 'index'}",
        "model=tiny",
        "backend=local",
        "log_level=DEBUG",
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hunter2" not in result.stdout + result.stderr
    assert "http://***@127.0.0.1:9/pdfs/" in result.stderr


def test_index_config_and_run_report_hold_no_header_or_userinfo_secrets(sample_corpus, tiny_model_dir, tmp_path):
    """What the driver stores (``config.yaml``, ``run_report.json``) and prints, with secrets in the source's
    storage options (the local filesystem takes and ignores them)."""
    from jobs.index import run

    source = tmp_path / "pdfs"
    source.mkdir()
    pdf = min(sample_corpus.glob("*.pdf"), key=lambda p: p.stat().st_size)
    shutil.copy(pdf, source / pdf.name)
    cfg = index_config(f"source.location={source}", f"output.location={tmp_path / 'index'}", "backend=local")
    secrets = {
        "headers": {"Authorization": f"Bearer {TOKEN}", "Cookie": "session=c00kie-value"},
        "proxy": "http://proxy-user:proxy-pass-9@proxy:3128",
    }
    OmegaConf.update(cfg, "source.storage_options", secrets, force_add=True)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run(cfg) == 0, printed.getvalue()
    stored = {p.name: p.read_text() for p in (tmp_path / "index").iterdir() if p.suffix in (".yaml", ".json")}
    assert {"config.yaml", "run_report.json"} <= stored.keys()
    for text in [*stored.values(), printed.getvalue()]:
        for secret in (TOKEN, "c00kie-value", "proxy-pass-9"):
            assert secret not in text
    config = OmegaConf.create(stored["config.yaml"])
    assert config.source.storage_options.headers == {"Authorization": "***", "Cookie": "***"}
    assert config.source.storage_options.proxy == "http://***@proxy:3128"
