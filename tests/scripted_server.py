"""A real HTTP server on a free loopback port that answers from a script and records every request.

The endpoint client runs on aiohttp, which ``responses`` cannot fake; this plays
the same part over a real socket (so headers, Content-Length and cookies are
what went over the wire). Like ``responses``: answers registered for a path are
used in order and the last one repeats; a callback gets the request and returns
(status, headers, body). An unregistered path gets a 404.

    with ScriptedServer() as server:
        server.post("/ml/ats/predict", json={"prediction": 1.0})
        ...
        server.calls  # [Request(method, path, headers, body), ...]
"""
from __future__ import annotations

import json as _json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple


class Request(NamedTuple):
    method: str
    path: str  # as on the request line: absolute when the request came through as a proxy
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return _json.loads(self.body)


class ScriptedServer:
    def __init__(self):
        self._answers: dict[str, list] = {}
        self.calls: list[Request] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real service

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = Request("POST", self.path, dict(self.headers.items()), self.rfile.read(length))
                status, headers, body = owner._answer(request)
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the listen backlog: many clients connect at once

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def post(self, path: str, json: Any = None, body: str | bytes = "", status: int = 200,
             headers: dict | None = None, callback: Callable[[Request], tuple] | None = None) -> None:
        """Register the next answer for ``path`` (any host: the path is matched without it)."""
        answer = callback or (status, headers or {}, _json.dumps(json) if json is not None else body)
        with self._lock:
            self._answers.setdefault(path, []).append(answer)

    def _answer(self, request: Request) -> tuple:
        path = "/" + request.path.split("://", 1)[1].split("/", 1)[1] if "://" in request.path else request.path
        with self._lock:
            self.calls.append(request)
            queue = self._answers.get(path)
            if not queue:
                return 404, {}, '{"detail": "not scripted"}'
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return answer(request) if callable(answer) else answer

    def calls_to(self, path: str) -> list[Request]:
        return [c for c in self.calls if c.path.endswith(path)]

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
