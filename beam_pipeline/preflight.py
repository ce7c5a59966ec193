"""Check that every endpoint host answers before any work starts.

A run against a server that is down would otherwise grind through retries for
every member; failing in a second with the URL is kinder.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

import requests

from lantern.errors import ConfigError
from lantern.partner import PartnerConfig

log = logging.getLogger(__name__)

HOW_TO_FIX = ("point the run at a service that is up with --endpoint-url http://HOST:PORT, or start the "
              "reference service from the repository root: uvicorn app:app --port 8000")


def _reason(exc: requests.RequestException) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if "name or service not known" in text or "nodename nor servname" in text or "resolution" in text:
        return "unknown host"
    return type(exc).__name__


def check_endpoints(partner: PartnerConfig, timeout_s: float = 5.0) -> None:
    """Any HTTP answer from the host counts: only an unreachable host is fatal here."""
    checked: set[str] = set()
    for kind in ("ats", "resp", "offer"):
        url = partner.url(kind, batch=partner.endpoints.batch)
        parts = urlsplit(url)
        root = f"{parts.scheme}://{parts.netloc}/"
        if root in checked:
            continue
        try:
            requests.get(root, timeout=timeout_s)
        except requests.RequestException as exc:
            raise ConfigError(f"cannot reach {kind.upper()} endpoint {url}: {_reason(exc)}; {HOW_TO_FIX}") from None
        checked.add(root)
        log.info("endpoint host %s answers", root)
