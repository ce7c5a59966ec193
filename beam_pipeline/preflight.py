"""Check that every endpoint host answers before any work starts.

A run against a server that is down would otherwise grind through retries for
every member; failing in a second with the URL is kinder.
"""
from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

import requests

from lantern.errors import ConfigError
from lantern.partner import PartnerConfig

log = logging.getLogger(__name__)

HOW_TO_FIX = ("point the run at a service that is up with --endpoint-url http://HOST:PORT, or start the "
              "reference service from the repository root: uvicorn app:app --port 8000")


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (127.0.0.0/8, ::1, localhost)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_workers_can_reach(partner: PartnerConfig) -> None:
    """On Dataflow the calls come from worker VMs: a loopback endpoint there is the worker itself.

    Checked before anything is written or any partner host is asked, so a launch that forgot the
    partner's production host fails in one line instead of failing every member.
    """
    url = partner.endpoints.base_url
    if is_loopback(url):
        raise ConfigError(
            f"endpoint {url} (partner {partner.name}) is this machine, which Dataflow workers cannot call: "
            "give the partner's production host with --endpoint-url (template parameter endpoint_url)"
        )


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
