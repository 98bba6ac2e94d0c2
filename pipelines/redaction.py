"""The one redaction of secrets from everything a job prints or stores: configs, reports, logs, errors.

:func:`redact` copies a config container (dicts, lists) with the values of secret-looking keys replaced by
``***``: tokens, passwords, keys, credentials, and HTTP headers that carry them (``Authorization``,
``Proxy-Authorization``, ``Cookie``, ``X-Api-Key``...); its strings go through :func:`redact_text`.
:func:`redact_text` removes the secrets a free text may hold: the user information of URLs
(``scheme://user:pass@host`` becomes ``scheme://***@host``), secret-looking URL query parameters (pre-signed
URLs' ``X-Amz-Signature``, SAS ``sig``, ``access_token``...), header lines (``Authorization: Bearer ...``),
bearer tokens, and any known secret value passed in (e.g. :meth:`pipelines.vespa.client.VespaEndpoint.secrets`).
:class:`RedactingFilter` applies it to every log line of a job (:func:`jobs._common.setup_logging`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "***"
#: A key holding any of these words (split at ``_`` and ``-``) holds a secret.
SECRET_PARTS = frozenset(
    {"token", "password", "passwd", "secret", "credentials", "authorization", "cookie", "apikey", "signature"}
)
#: Whole key names that hold secrets (or secret material: a key, a PEM text, a connection string).
SECRET_NAMES = frozenset(
    {"key", "key_content", "cert_content", "connection_string", "sas_token", "sig", "api_key", "set_cookie"}
)
#: Header names (lowercase) whose values are secrets, for free text: ``Authorization: ...``, ``'x-api-key': '...'``.
_SECRET_HEADERS = (
    r"authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|apikey|x-auth-token|x-amz-security-token"
)
#: ``scheme://userinfo@``: everything between ``//`` and the last ``@`` of the authority (a password may hold ``@``).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s'\"<>]+)@")
#: A URL query parameter (``?`` or ``&`` then ``name=value``) whose name looks secret.
_QUERY_PARAM = re.compile(r"(?P<lead>[?&](?P<name>[A-Za-z0-9_.-]+)=)(?P<value>[^&#\s'\"<>]+)")
#: A header in text: ``Authorization: Basic abc``, ``"Cookie": "a=b"``, ``x-api-key=abc``.
_HEADER = re.compile(
    rf"(?P<lead>(?P<q>['\"]?)\b(?:{_SECRET_HEADERS})(?P=q)\s*[:=]\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\r\n,;}}]+)",
    re.IGNORECASE,
)
#: A bare bearer token (``Bearer eyJ...``) wherever it appears.
_BEARER = re.compile(r"\b(?P<lead>Bearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE)


def is_secret_key(key: Any) -> bool:
    """True when a config key names a secret value; a key ending in ``_env`` names an environment variable
    (the secret's source), not the secret, and stays visible."""
    name = str(key).lower().replace("-", "_")
    if name.endswith("_env"):
        return False
    parts = set(name.split("_"))
    return bool(parts & SECRET_PARTS) or name in SECRET_NAMES or name.endswith("_key")


def redact(value: Any) -> Any:
    """Copy of a config container with the values of secret-looking keys (:func:`is_secret_key`) replaced by
    ``***`` and every string redacted as text (:func:`redact_text`); empty values stay as they are (they show
    that a secret was not set)."""
    if isinstance(value, dict):
        return {
            key: REDACTED if is_secret_key(key) and item not in (None, "") else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(item) for item in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without the secrets it may hold: URL user information, secret URL query parameters, secret
    headers, bearer tokens, and each of ``secrets`` (known secret values)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    if "://" in text:
        text = _USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    if "=" in text:
        text = _QUERY_PARAM.sub(_redact_param, text)
    text = _HEADER.sub(_redact_header, text)
    return _BEARER.sub(rf"\g<lead>{REDACTED}", text)


def _redact_param(match: re.Match) -> str:
    return match["lead"] + REDACTED if is_secret_key(match["name"]) else match[0]


def _redact_header(match: re.Match) -> str:
    value = match["value"]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match['lead']}{quote}{REDACTED}{quote}"


class RedactingFilter(logging.Filter):
    """A handler filter that writes every record's message redacted (:func:`redact_text`): the message is
    formatted here, so a secret in its arguments (a URL, an exception text) is caught too."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True
