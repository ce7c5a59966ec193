"""The reference service, noting when each POST arrives, for the rate-cap tests: ``GET /_arrivals``.

Served by uvicorn in one process (``uvicorn tests.arrivals_service:app``), so the
arrival times are the server's own clock, whatever the client does.
"""
from __future__ import annotations

import json
import time

from app import app as reference

arrivals: list[float] = []


async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/_arrivals":
        body = json.dumps(arrivals).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] == "http" and scope["method"] == "POST":
        arrivals.append(time.monotonic())
    await reference(scope, receive, send)
