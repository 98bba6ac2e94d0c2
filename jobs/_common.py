"""Shared entry-point plumbing: logging, and printing an error with the exit status a job returns."""

from __future__ import annotations

import logging
import sys

from pipelines.redaction import RedactingFilter, redact_text


def setup_logging(level: str) -> None:
    """Log to stderr at ``level``, every line redacted (:class:`~pipelines.redaction.RedactingFilter`)."""
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def error(message: str, code: int = 2) -> int:
    """Print ``error: <message>`` (redacted) to stderr and return ``code``: in-process job functions return it."""
    print(f"error: {redact_text(message)}", file=sys.stderr)
    return code
