"""CPU the pipeline's side spends per endpoint call: N sequential calls against a real server.

    python benchmarks/client_cpu.py              # 2,000 calls per client, best of 3
    python benchmarks/client_cpu.py --calls 500

The reference service runs in its own process (``benchmarks/serve.py``, one
worker), so ``time.process_time`` of this process is the client's CPU alone.
In per-member mode the client shares the machine's cores with the server, so
every millisecond here is taken from the server's capacity. Clients, cheapest
first: ``http.client`` (the floor), urllib3's pool, a plain ``requests``
session, and ``PartnerClient.call`` (requests with the partner's retries,
throttling and metrics: what the pipeline runs).
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import urllib3  # noqa: E402

from benchmarks.perf import SAMPLE_FEATURES, reference_server  # noqa: E402
from lantern import partner as partners  # noqa: E402
from transforms.endpoints import PartnerClient, decide  # noqa: E402

ATS = "/ml/ats/predict"


def http_client(url: str):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    body = json.dumps(SAMPLE_FEATURES)

    def call():
        conn.request("POST", ATS, body, {"Content-Type": "application/json"})
        json.loads(conn.getresponse().read())
    return call


def urllib3_pool(url: str):
    pool = urllib3.PoolManager(maxsize=1)

    def call():
        pool.request("POST", url + ATS, body=json.dumps(SAMPLE_FEATURES),
                     headers={"Content-Type": "application/json"}).json()
    return call


def requests_session(url: str):
    session = requests.Session()

    def call():
        session.post(url + ATS, data=json.dumps(SAMPLE_FEATURES), headers={"Content-Type": "application/json"},
                     timeout=(3, 10)).json()
    return call


def partner_client(url: str):
    client = PartnerClient(partners.load_named("default").with_endpoint_url(url))

    def call():
        result = client.call("ats", SAMPLE_FEATURES)
        assert result.error is None, result.error
    return call


def partner_decide(url: str):
    """One member's three calls (``decide``); reported per call, i.e. divided by 3."""
    client = PartnerClient(partners.load_named("default").with_endpoint_url(url))

    def call():
        out = decide(client, SAMPLE_FEATURES)
        assert out["STATUS"] == "OK", out["ERROR"]
    return call


CLIENTS = {"http.client": http_client, "urllib3": urllib3_pool, "requests": requests_session,
           "PartnerClient.call": partner_client, "decide (per call)": partner_decide}


def measure(call, n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call."""
    for _ in range(50):  # connect, warm caches
        call()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        call()
    return (time.process_time() - c0) * 1000 / n, (time.perf_counter() - t0) * 1000 / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many measurements per client")
    parser.add_argument("--only", default="", help="comma-separated client names")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CLIENTS)
    print(f"| client ({args.calls} sequential calls, best of {args.repeat}) | CPU ms/call | wall ms/call |")
    print("| --- | ---: | ---: |")
    with reference_server(1) as (url, _):
        for name in names:
            call = CLIENTS[name](url)
            per = 3 if name.startswith("decide") else 1
            cpu, wall = min(measure(call, args.calls // per) for _ in range(args.repeat))
            print(f"| {name} | {cpu / per:.3f} | {wall / per:.3f} |", flush=True)


if __name__ == "__main__":
    main()
