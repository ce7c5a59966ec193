"""An endpoint that misbehaves below HTTP: it hangs, resets connections, or answers garbage.

``GET /`` is answered properly (the pipeline's preflight sees the host up); every
POST gets the chosen misbehaviour:

- ``hang``: reads the request and never answers (the client's read timeout must end it);
- ``reset``: reads the request and closes the connection with a TCP reset;
- ``garbage``: answers bytes that are not HTTP.
"""
from __future__ import annotations

import socket
import struct
import threading

PONG = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"msg": "pong"}'


class BrokenServer:
    def __init__(self, mode: str):
        assert mode in ("hang", "reset", "garbage")
        self.mode = mode
        self.posts = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(512)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    conn.close()
                    return
                if data.startswith(b"GET"):
                    conn.sendall(PONG)
                    continue
                with self._lock:
                    self.posts += 1
                if self.mode == "hang":
                    with self._lock:
                        self._held.append(conn)  # never answered, closed when the server stops
                    return
                if self.mode == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                    return
                conn.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
                conn.close()
                return
        except OSError:
            conn.close()

    def __enter__(self) -> BrokenServer:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            for conn in self._held:
                conn.close()
