"""Shared entry-point plumbing: logging, and printing an error with the exit status a job returns."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def error(message: str, code: int = 2) -> int:
    """Print ``error: <message>`` to stderr and return ``code``: in-process job functions return it."""
    print(f"error: {message}", file=sys.stderr)
    return code
