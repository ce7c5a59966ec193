"""The reference service under uvicorn with N workers, without uvicorn's Nagle delay.

``uvicorn --workers N`` (N > 1) binds the listening socket with ``proto`` 0, so
asyncio never sets TCP_NODELAY on its connections and every keep-alive request
after the first waits ~40 ms for the client's delayed ACK (uvicorn issue #3149,
open for 0.54). A real partner's server does not behave like this, and with it
the measured "capacity" would be connections / 40 ms instead of what the CPU
allows. This launcher re-labels the socket as TCP before the workers inherit it.

    python benchmarks/serve.py --port 8000 --workers 2
"""
from __future__ import annotations

import argparse
import socket
from pathlib import Path

import uvicorn
from uvicorn.config import Config

_bind_socket = Config.bind_socket


def _bind_tcp_socket(self: Config) -> socket.socket:
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    Config.bind_socket = _bind_tcp_socket
    uvicorn.run("app:app", host=args.host, port=args.port, workers=args.workers, log_level="warning",
                app_dir=str(Path(__file__).resolve().parent.parent))


if __name__ == "__main__":
    main()
