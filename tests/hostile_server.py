"""A reference service whose prediction route misbehaves for some members, in every way we know of.

Each POST is answered by the reference formulas (``prediction.py``, so healthy
members get exactly the reference service's answers), except on the routes
named by ``paths`` (default: ATS), where a share ``rate`` of requests, chosen
by a hash of the request body (a retry meets the same behaviour), gets one of
``BEHAVIOURS``, in turn by the same hash. ``GET /`` always answers (preflight).
A raw asyncio server, so it can do what no HTTP framework lets a route do:
drip a body, reset a connection, send a short body, lie in Content-Length.

It remembers which requests misbehaved (``affected``: one key per instance in
the request, see ``instance_key``), counts requests and how many carried the
``secret`` anywhere in their headers or body: a second server on another port
plays "another origin" for the redirects and must see none of them.

    python -m tests.hostile_server --port 8001 --other-port 8002 --rate 0.1 --secret s3cr3t
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import socket
import struct
import threading
import zlib
from collections import Counter

import prediction

CHUNK = 64 * 1024


# name -> the reason a member must fail with: a substring ({other} and {self} filled in), or any of several
BEHAVIOURS: dict[str, str | tuple[str, ...]] = {
    "redirect_other": "HTTP 302: redirect to {other} not followed (another origin)",
    "redirect_same": "HTTP 307: redirect to {self} not followed (same origin",
    "drip": ("ConnectionError: attempt timeout: no complete answer within", "ConnectionError: member timeout"),
    # a busy machine may take longer to send the request than the attempt's deadline leaves for the read
    "hang": ("ConnectionError: read timeout", "ConnectionError: attempt timeout", "ConnectionError: member timeout"),
    "gzip_bomb": "response too large: decoded body more than",
    "huge_body": "response too large: Content-Length 31457280, more than",
    "huge_chunked": "response too large: body more than",
    "deep_json": "bad response: JSON nested too deeply",
    "html": "bad response: body is not JSON: '<html>",
    "missing_field": "bad response: response has no '",
    "nan": "is not finite: nan",
    "string": "is not a number: '12.5'",
    "null": "is not a number: None",
    "array": "bad response: response has no '",
    "reset": "ConnectionError: connection lost",
    "short_body": "ConnectionError: connection lost",
    "garbage": "ConnectionError: bad HTTP answer",
}
MOVED = "/moved"  # where redirect_same points: served healthily, for partners that follow same-origin redirects


def instance_key(instance: dict) -> str:
    """One member's request instance, canonical: how tests find which members met which behaviour."""
    return json.dumps(instance, sort_keys=True)


def choose(body: bytes, rate: float, behaviours: tuple[str, ...]) -> str | None:
    """The behaviour for a request body (None: answer properly); the same body, the same choice."""
    if rate <= 0:
        return None
    h = zlib.crc32(body)
    if (h % 10_000) >= rate * 10_000:
        return None
    return behaviours[(h // 10_000) % len(behaviours)]


@functools.lru_cache(maxsize=2)
def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (about size / 1000 bytes on the wire)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(min(size, 1 << 20))
    parts, left = [], size
    while left > 0:
        parts.append(comp.compress(block[:left] if left < len(block) else block))
        left -= len(block)
    parts.append(comp.flush())
    return b"".join(parts)


class HostileServer:
    def __init__(self, rate: float = 0.1, paths: tuple[str, ...] = ("/ml/ats/",),
                 behaviours: tuple[str, ...] = tuple(BEHAVIOURS), secret: str = "",
                 other: str = "", drip_interval_s: float = 0.2, bomb_bytes: int = 64 << 20,
                 port: int = 0):
        self.rate, self.paths, self.behaviours = rate, paths, behaviours
        self.secret = secret.encode()
        self.other = other.rstrip("/")  # the other origin redirect_other points to
        self.drip_interval_s = drip_interval_s
        self._bomb_bytes = bomb_bytes
        self.requests = 0
        self.secret_seen = 0
        self.behaved: Counter = Counter()  # behaviour -> requests that got it
        self.affected: dict[str, str] = {}  # instance_key -> behaviour
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server = None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self._sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._run, name="hostile-server", daemon=True)

    # -- serving --

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, sock=self._sock, backlog=1024, limit=1 << 20))
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = [*lines[0].split(" "), "", ""][:3]
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                with self._lock:
                    self.requests += 1
                    self.secret_seen += bool(self.secret) and (self.secret in head or self.secret in body)
                if method != "POST":
                    await self._send(writer, 200, b'{"msg": "pong"}')
                    continue
                if not await self._answer(path, body, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _send(self, writer, status: int, body: bytes, extra: str = "", length: int | None = None) -> None:
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\n{extra}\r\n")
        writer.write(head.encode() + body)
        await writer.drain()

    def _healthy(self, path: str, body: bytes) -> tuple[int, bytes]:
        batch = path.endswith("/batch")
        try:
            data = json.loads(body)
            instances = data["instances"] if batch else [data]
            if path.startswith("/offer/"):
                out = [prediction.offer(prediction.Prediction.model_validate(i)) for i in instances]
                field = "offer"
            else:
                model = prediction.ats if path.startswith("/ml/ats/") else prediction.resp
                out = [model(prediction.Features.model_validate(i)) for i in instances]
                field = "prediction"
        except (ValueError, KeyError, TypeError) as exc:
            return 422, json.dumps({"detail": str(exc)[:200]}).encode()
        return 200, (json.dumps({"predictions": out}) if batch else json.dumps({field: out[0]})).encode()

    async def _answer(self, path: str, body: bytes, reader, writer) -> bool:
        """Answer one POST; False when the connection is done with."""
        if path.startswith(MOVED):
            status, data = self._healthy(path[len(MOVED):], body)
            await self._send(writer, status, data)
            return True
        behaviour = choose(body, self.rate, self.behaviours) if path.startswith(self.paths) else None
        if behaviour is None:
            status, data = self._healthy(path, body)
            await self._send(writer, status, data)
            return True
        self._record(behaviour, path, body)
        return await getattr(self, f"_{behaviour}")(path, body, writer, reader)

    def _record(self, behaviour: str, path: str, body: bytes) -> None:
        try:
            data = json.loads(body)
            instances = data["instances"] if path.endswith("/batch") else [data]
        except (ValueError, KeyError, TypeError):
            instances = []
        with self._lock:
            self.behaved[behaviour] += 1
            for instance in instances:
                self.affected[instance_key(instance)] = behaviour

    # -- the behaviours: each answers (or not) and says whether the connection stays usable --

    async def _redirect_other(self, path, body, writer, reader) -> bool:
        await self._send(writer, 302, b"", f"Location: {self.other}{path}\r\n")
        return True

    async def _redirect_same(self, path, body, writer, reader) -> bool:
        await self._send(writer, 307, b"", f"Location: {MOVED}{path}\r\n")
        return True

    async def _drip(self, path, body, writer, reader) -> bool:
        """A proper answer, one byte per ``drip_interval_s``: each read gets a byte in time."""
        data = b'{"prediction": 1.0}' + b" " * 4096
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                     .encode())
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            if writer.is_closing() or reader.at_eof():
                return False
            await asyncio.sleep(self.drip_interval_s)
        return False

    async def _hang(self, path, body, writer, reader) -> bool:
        await reader.read()  # until the client gives up and closes
        return False

    async def _gzip_bomb(self, path, body, writer, reader) -> bool:
        await self._send(writer, 200, gzip_bomb(self._bomb_bytes), "Content-Encoding: gzip\r\n")
        return True

    async def _huge_body(self, path, body, writer, reader) -> bool:
        size = 30 * 1024 * 1024
        await self._send(writer, 200, b"", length=size)
        block = b" " * CHUNK
        for _ in range(size // CHUNK):  # streamed: the server holds one block, not 30 MB
            writer.write(block)
            await writer.drain()
        return True

    async def _huge_chunked(self, path, body, writer, reader) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = f"{CHUNK:x}\r\n".encode() + b" " * CHUNK + b"\r\n"
        for _ in range(30 * 1024 * 1024 // CHUNK):
            writer.write(block)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _deep_json(self, path, body, writer, reader) -> bool:
        await self._send(writer, 200, b"[" * 20_000 + b"]" * 20_000)
        return True

    async def _html(self, path, body, writer, reader) -> bool:
        await self._send(writer, 200, b"<html>upstream error</html>")
        return True

    async def _field_body(self, path, body, writer, value: str, item: str | None = None) -> bool:
        """A 200 whose JSON is not what was promised: ``value`` on a per-member route; on a
        batch route, ``item`` for every instance (or ``value`` as the whole body)."""
        if path.endswith("/batch"):
            count = len(json.loads(body)["instances"])
            value = '{"predictions": [' + ", ".join([item] * count) + "]}" if item is not None else value
        await self._send(writer, 200, value.encode())
        return True

    async def _missing_field(self, path, body, writer, reader) -> bool:
        return await self._field_body(path, body, writer, "{}")

    async def _nan(self, path, body, writer, reader) -> bool:
        return await self._field_body(path, body, writer, '{"prediction": NaN}', "NaN")

    async def _string(self, path, body, writer, reader) -> bool:
        return await self._field_body(path, body, writer, '{"prediction": "12.5"}', '"12.5"')

    async def _null(self, path, body, writer, reader) -> bool:
        return await self._field_body(path, body, writer, '{"prediction": null}', "null")

    async def _array(self, path, body, writer, reader) -> bool:
        return await self._field_body(path, body, writer, "[1.0]")

    async def _reset(self, path, body, writer, reader) -> bool:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        return False

    async def _short_body(self, path, body, writer, reader) -> bool:
        await self._send(writer, 200, b'{"predic', length=100)
        writer.close()
        return False

    async def _garbage(self, path, body, writer, reader) -> bool:
        writer.write(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()
        return False

    # -- life cycle --

    def __enter__(self) -> HostileServer:
        if "gzip_bomb" in self.behaviours and self.rate:
            gzip_bomb(self._bomb_bytes)  # made once, before serving (seconds for a gigabyte)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        async def stop():
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    def reason_fits(self, behaviour: str, error: str) -> bool:
        """Whether a member's error names what ``behaviour`` did."""
        expected = BEHAVIOURS[behaviour]
        return any(e.format(other=self.other, self=self.url) in error
                   for e in (expected if isinstance(expected, tuple) else (expected,)))


def main(argv: list[str] | None = None) -> None:
    """Serve a hostile server and its "other origin" until interrupted, printing their counts at exit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--other-port", type=int, default=8002)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--secret", default="")
    parser.add_argument("--paths", default="/ml/ats/", help="comma list of route prefixes that misbehave")
    parser.add_argument("--drip-interval-s", type=float, default=1.0)
    parser.add_argument("--bomb-bytes", type=int, default=1 << 30)
    parser.add_argument("--report", help="write the counts and affected instances here (JSON) at exit")
    args = parser.parse_args(argv)
    import signal

    other = HostileServer(rate=0, secret=args.secret, port=args.other_port)
    hostile = HostileServer(rate=args.rate, paths=tuple(args.paths.split(",")), secret=args.secret, other=other.url,
                            drip_interval_s=args.drip_interval_s, bomb_bytes=args.bomb_bytes, port=args.port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with other, hostile:
        print(f"hostile {hostile.url} other {other.url}", flush=True)
        done.wait()
    report = {"requests": hostile.requests, "secret_seen": hostile.secret_seen, "behaved": dict(hostile.behaved),
              "affected": hostile.affected, "other_requests": other.requests, "other_secret_seen": other.secret_seen}
    if args.report:
        with open(args.report, "w", encoding="utf-8") as out:
            json.dump(report, out)


if __name__ == "__main__":
    main()
