"""Where the Vespa cluster is and how to authenticate, without ever leaking the secrets.

Credentials come from config or the environment: a data-plane token (``token``, or the environment
variable named by ``token_env``, default ``VESPA_CLOUD_SECRET_TOKEN``) or mTLS (``cert``/``key`` file
paths, or the environment variables ``VESPA_CLIENT_CERT``/``VESPA_CLIENT_KEY`` holding either a path
or the PEM text). :meth:`VespaEndpoint.describe` is the only view of an endpoint that goes into logs
and reports; it names the auth method, never the secret.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.parse
from dataclasses import dataclass, field

from vespa.application import Vespa

from pipelines.vespa.app import SCHEMA_NAME


@dataclass
class VespaEndpoint:
    """A Vespa container endpoint (query and ``/document/v1``). Hydra group ``vespa.endpoint``."""

    url: str | None = None  # e.g. http://localhost:8080 or https://<id>.z.vespa-app.cloud
    schema: str = SCHEMA_NAME
    namespace: str = SCHEMA_NAME
    content_cluster: str = "pages"  # needed by selection deletes (document/v1 'cluster' parameter)
    # prefer token_env: config files end up in reports and shell history
    token: str | None = field(default=None, repr=False)
    token_env: str = "VESPA_CLOUD_SECRET_TOKEN"
    cert: str | None = None  # mTLS client certificate (PEM file)
    key: str | None = None  # mTLS client key (PEM file)
    cert_env: str = "VESPA_CLIENT_CERT"  # env var holding a PEM path or PEM text
    key_env: str = "VESPA_CLIENT_KEY"
    cert_content: str | None = field(default=None, repr=False)  # PEM text (set by resolved())
    key_content: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.url is not None:
            parsed = urllib.parse.urlparse(str(self.url))
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                msg = f"vespa.endpoint.url must be http(s)://host[:port], got {self.safe_url!r}"
                raise ValueError(msg)
            if parsed.username or parsed.password:
                msg = "vespa.endpoint.url must not carry credentials; use vespa.endpoint.token_env or cert/key"
                raise ValueError(msg)

    @property
    def configured(self) -> bool:
        return bool(self.url)

    @property
    def safe_url(self) -> str:
        parsed = urllib.parse.urlparse(str(self.url or ""))
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        return f"{parsed.scheme}://{host}{port}{parsed.path}".rstrip("/")

    def _token(self) -> str | None:
        return self.token or (os.environ.get(self.token_env) if self.token_env else None) or None

    def _pem(self, path: str | None, env: str, content: str | None = None) -> tuple[str | None, str | None]:
        """(file path, PEM content) of a cert or key from config or environment."""
        if content:
            return None, content
        if path:
            return path, None
        value = os.environ.get(env) if env else None
        if not value:
            return None, None
        return (None, value) if "-----BEGIN" in value else (value, None)

    def resolved(self) -> VespaEndpoint:
        """Copy with every credential read now from config or the environment (for code that runs on
        other machines, and the one place the sources of credentials are decided)."""
        cert_path, cert_content = self._pem(self.cert, self.cert_env, self.cert_content)
        key_path, key_content = self._pem(self.key, self.key_env, self.key_content)
        return dataclasses.replace(
            self, token=self._token(), cert=cert_path, key=key_path, cert_content=cert_content, key_content=key_content
        )

    @property
    def auth_method(self) -> str:
        credentials = self.resolved()
        if credentials.token:
            return "token"
        return "mtls" if credentials.cert or credentials.cert_content else "none"

    def connect(self) -> Vespa:
        """A pyvespa application handle with the configured credentials."""
        if not self.url:
            msg = "no Vespa endpoint: set vespa.endpoint.url=http(s)://host:8080"
            raise ValueError(msg)
        credentials = self.resolved()
        url = str(self.url).rstrip("/")
        if credentials.token:
            return Vespa(url=url, vespa_cloud_secret_token=credentials.token)
        if credentials.cert_content:
            return Vespa(url=url, cert_content=credentials.cert_content, key_content=credentials.key_content)
        return Vespa(url=url, cert=credentials.cert, key=credentials.key)

    def describe(self) -> dict[str, str]:
        """Loggable description: URL without credentials, schema, namespace, auth method."""
        return {
            "url": self.safe_url,
            "schema": self.schema,
            "namespace": self.namespace,
            "content_cluster": self.content_cluster,
            "auth": self.auth_method,
        }

    def target_key(self) -> str:
        """Stable short key of (URL, namespace, schema): where feed state for this target is kept."""
        raw = f"{self.safe_url}|{self.namespace}|{self.schema}"
        host = urllib.parse.urlparse(self.safe_url).hostname or "vespa"
        return f"{host}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"

    def secrets(self) -> list[str]:
        """Secret values in play (token, PEM key text), for :func:`pipelines.redaction.redact_text` before text is
        logged."""
        credentials = self.resolved()
        return [v for v in (credentials.token, credentials.key_content) if v]
