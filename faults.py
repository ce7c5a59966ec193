"""Fault injection for the reference service, so reliability can be tested against a real server.

Off unless a ``FAULT_*`` environment variable is set when ``app.py`` is
imported (docs/failure-handling.md lists them). Only the POST routes (the
prediction and offer endpoints) are affected, never ``GET /``, so the
pipeline's preflight still sees the host answer: a failing endpoint and a host
that is down are different failures.

For each request the middleware first adds latency (with probability
``FAULT_LATENCY_RATE``), then makes one draw that decides between an error
status (``FAULT_RATE``), a 429 with ``Retry-After`` (``FAULT_429_RATE``), a
malformed 200 body (``FAULT_MALFORMED_RATE``) and the real answer.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
from collections.abc import Mapping
from typing import NamedTuple

log = logging.getLogger(__name__)

# Malformed 200 bodies; "{field}" is "offer" on the offer route, else "prediction".
MALFORMED_BODIES = {
    "not_json": "<html>upstream error</html>",
    "missing_field": "{{}}",
    "null": '{{"{field}": null}}',
    "nan": '{{"{field}": NaN}}',
    "infinity": '{{"{field}": Infinity}}',
    "string": '{{"{field}": "12.5"}}',
    "unknown_offer": '{{"{field}": "OFFER_99"}}',
}
OFFER_ROUTE = "/offer/assign"


class FaultConfigError(ValueError):
    """A FAULT_* variable has a value that cannot be used."""


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    rate: float = 0.0  # FAULT_RATE: fraction of requests answered with `status`
    status: int = 500  # FAULT_STATUS
    latency_ms: float = 0.0  # FAULT_LATENCY_MS: added before the request is handled
    latency_rate: float = 1.0  # FAULT_LATENCY_RATE: fraction of requests that get the latency
    malformed_rate: float = 0.0  # FAULT_MALFORMED_RATE: fraction answered 200 with a bad body
    malformed_kinds: tuple[str, ...] = tuple(MALFORMED_BODIES)  # FAULT_MALFORMED_KINDS
    rate_429: float = 0.0  # FAULT_429_RATE: fraction answered 429 with Retry-After
    retry_after_s: int = 1  # FAULT_RETRY_AFTER_S
    paths: tuple[str, ...] = ()  # FAULT_PATHS: route prefixes affected; empty = every POST route
    seed: int | None = None  # FAULT_SEED: repeatable draws (per server process)

    def __post_init__(self):
        for name in ("rate", "latency_rate", "malformed_rate", "rate_429"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FaultConfigError(f"{_ENV_NAMES[name]}={value}: must be between 0 and 1")
        if self.rate + self.rate_429 + self.malformed_rate > 1.0:
            raise FaultConfigError("FAULT_RATE + FAULT_429_RATE + FAULT_MALFORMED_RATE must not exceed 1")
        if not 400 <= self.status <= 599:
            raise FaultConfigError(f"FAULT_STATUS={self.status}: must be an HTTP error status (400-599)")
        if self.latency_ms < 0 or self.retry_after_s < 0:
            raise FaultConfigError("FAULT_LATENCY_MS and FAULT_RETRY_AFTER_S must not be negative")
        unknown = set(self.malformed_kinds) - set(MALFORMED_BODIES)
        if unknown or not self.malformed_kinds:
            raise FaultConfigError(
                f"FAULT_MALFORMED_KINDS: unknown {sorted(unknown)}; known: {', '.join(MALFORMED_BODIES)}"
            )

    @property
    def active(self) -> bool:
        return bool(self.rate or self.rate_429 or self.malformed_rate or (self.latency_ms and self.latency_rate))

    def applies_to(self, method: str, path: str) -> bool:
        return method == "POST" and (not self.paths or any(path.startswith(p) for p in self.paths))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> FaultConfig:
        values = {}
        for field in dataclasses.fields(cls):
            text = env.get(_ENV_NAMES[field.name], "").strip()
            if not text:
                continue
            try:
                values[field.name] = _PARSERS[field.name](text)
            except ValueError:
                raise FaultConfigError(f"{_ENV_NAMES[field.name]}={text!r} is not valid") from None
        return cls(**values)


_ENV_NAMES = {
    "rate": "FAULT_RATE", "status": "FAULT_STATUS", "latency_ms": "FAULT_LATENCY_MS",
    "latency_rate": "FAULT_LATENCY_RATE", "malformed_rate": "FAULT_MALFORMED_RATE",
    "malformed_kinds": "FAULT_MALFORMED_KINDS", "rate_429": "FAULT_429_RATE",
    "retry_after_s": "FAULT_RETRY_AFTER_S", "paths": "FAULT_PATHS", "seed": "FAULT_SEED",
}


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_PARSERS = {
    "rate": float, "status": int, "latency_ms": float, "latency_rate": float, "malformed_rate": float,
    "malformed_kinds": _names, "rate_429": float, "retry_after_s": int, "paths": _names, "seed": int,
}


class Fault(NamedTuple):
    """What to do to one request: wait, then either answer with this instead, or pass it on."""

    delay_s: float
    status: int | None = None  # None: let the real route answer
    body: str = ""
    headers: dict | None = None


def choose(config: FaultConfig, path: str, rng: random.Random) -> Fault:
    """The fault for one request; pure given the random source."""
    delay = config.latency_ms / 1000 if config.latency_ms and rng.random() < config.latency_rate else 0.0
    draw = rng.random()
    if draw < config.rate:
        return Fault(delay, config.status, json.dumps({"detail": f"injected fault: HTTP {config.status}"}))
    draw -= config.rate
    if draw < config.rate_429:
        return Fault(delay, 429, json.dumps({"detail": "injected fault: slow down"}),
                     {"Retry-After": str(config.retry_after_s)})
    draw -= config.rate_429
    if draw < config.malformed_rate:
        kinds = [k for k in config.malformed_kinds if k != "unknown_offer" or path.startswith(OFFER_ROUTE)]
        kind = rng.choice(kinds or ["not_json"])
        field = "offer" if path.startswith(OFFER_ROUTE) else "prediction"
        return Fault(delay, 200, MALFORMED_BODIES[kind].format(field=field))
    return Fault(delay)


class FaultInjectionMiddleware:
    """ASGI middleware that applies ``choose`` to every affected request."""

    def __init__(self, app, config: FaultConfig):
        self.app = app
        self.config = config
        self.rng = random.Random(config.seed)  # the event loop is one thread: no lock needed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.config.applies_to(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        fault = choose(self.config, scope["path"], self.rng)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.status is None:
            await self.app(scope, receive, send)
            return
        more = True
        while more:  # read the request body so the keep-alive connection stays usable
            message = await receive()
            more = message.get("more_body", False) and message["type"] == "http.request"
        body = fault.body.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (fault.headers or {}).items()]
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
