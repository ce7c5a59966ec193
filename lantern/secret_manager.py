"""A partner's auth secret read from Google Secret Manager, for Dataflow where no env var is set.

Locally the partner file's ``auth.env`` variable holds the secret. A Dataflow
worker has no such variable, so the job carries only the secret's resource name
(``--auth-secret projects/P/secrets/S/versions/V``) and each worker process
reads the value itself when its endpoint DoFn is set up, with the worker service
account. The value never enters the job graph, the template, run.json or a log.
"""
from __future__ import annotations

import logging
import threading

from lantern.errors import ConfigError

log = logging.getLogger(__name__)

_values: dict[str, str] = {}
_lock = threading.Lock()


def _client():
    from google.cloud import secretmanager

    return secretmanager.SecretManagerServiceClient()


def access(resource: str) -> str:
    """The secret's value, read once per process (DoFn setups on a worker share it)."""
    with _lock:
        if resource not in _values:
            _values[resource] = _fetch(resource)
        return _values[resource]


def _fetch(resource: str) -> str:
    try:
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError

        client = _client()
    except ImportError:
        raise ConfigError(
            f"secret {resource}: google-cloud-secret-manager is not installed (pip install '.[dataflow]')"
        ) from None
    try:
        response = client.access_secret_version(request={"name": resource})
    except (GoogleAPIError, GoogleAuthError) as exc:
        raise ConfigError(f"secret {resource}: cannot read it: {type(exc).__name__}: {exc}"[:300]) from None
    # `echo token | gcloud secrets create --data-file=-` stores a trailing newline, never part of a header
    value = response.payload.data.decode("utf-8").strip()
    if not value:
        raise ConfigError(f"secret {resource} is empty")
    log.info("read auth secret %s", resource)
    return value
