"""CPU the pipeline's side spends per endpoint call, against a real server.

    python benchmarks/client_cpu.py              # 2,000 sequential calls per client, best of 3
    python benchmarks/client_cpu.py --calls 500
    python benchmarks/client_cpu.py --in-flight 2000   # 2,000 members at once: the pipeline's
                                                       # client against a bare aiohttp loop

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
import asyncio
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
from benchmarks.results import Recorder  # noqa: E402
from lantern import partner as partners  # noqa: E402
from transforms.endpoints import decide, decide_async  # noqa: E402
from transforms.partner_client import PartnerClient  # noqa: E402

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


def concurrent_partner_client(url: str, members: int) -> tuple[float, float, int]:
    """``members`` members decided at once through ``PartnerClient`` (adaptive limits, retries,
    metrics): (CPU ms per call, wall s, peak calls in flight to ATS)."""
    client = PartnerClient(partners.load_named("default").with_endpoint_url(url))
    peak = 0

    async def all_members():
        nonlocal peak
        tasks = [asyncio.ensure_future(decide_async(client, SAMPLE_FEATURES)) for _ in range(members)]
        while not all(t.done() for t in tasks):
            peak = max(peak, client.slots["ats"].in_flight)
            await asyncio.sleep(0.01)
        assert all(t.result()["STATUS"] == "OK" for t in tasks)

    try:
        client.loop.run(all_members())  # warm up: connections and the limits' slow start
        c0, t0 = time.process_time(), time.perf_counter()
        client.loop.run(all_members())
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    finally:
        client.close()
    return cpu * 1000 / (3 * members), wall, peak


def concurrent_aiohttp(url: str, members: int) -> tuple[float, float, int]:
    """The same three calls per member with a bare aiohttp session (100 connections)."""
    import aiohttp

    async def run_once():
        async with aiohttp.ClientSession() as session:
            async def post(path, body):
                async with session.post(url + path, json=body) as response:
                    return await response.json()

            async def member():
                ats, resp = await asyncio.gather(post("/ml/ats/predict", SAMPLE_FEATURES),
                                                 post("/ml/resp/predict", SAMPLE_FEATURES))
                await post("/offer/assign", {"ats_prediction": ats["prediction"],
                                             "resp_prediction": resp["prediction"]})

            await asyncio.gather(*(member() for _ in range(members)))

    asyncio.run(run_once())
    c0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(run_once())
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return cpu * 1000 / (3 * members), wall, 100


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
    parser.add_argument("--in-flight", type=int, default=0,
                        help="instead: this many members at once, PartnerClient against bare aiohttp")
    parser.add_argument("--latency-ms", type=int, default=25, help="with --in-flight: FAULT_LATENCY_MS of the server")
    args = parser.parse_args(argv)
    if args.in_flight:
        import os

        os.environ["FAULT_LATENCY_MS"] = str(args.latency_ms)  # inherited by the server process
        print(f"| client ({args.in_flight} members at once, {args.latency_ms} ms server latency) "
              "| CPU ms/call | wall s | peak ATS calls in flight |")
        print("| --- | ---: | ---: | ---: |")
        recorder = Recorder("client_cpu", argv if argv is not None else sys.argv[1:],
                            ["client", "members", "cpu_ms_per_call", "wall_s", "peak_ats_in_flight"])
        with reference_server(1) as (url, _):
            contenders = (("aiohttp alone", concurrent_aiohttp), ("PartnerClient", concurrent_partner_client))
            runs: dict[str, list] = {name: [] for name, _ in contenders}
            for _ in range(args.repeat):  # alternating, so both see the same machine
                for name, fn in contenders:
                    runs[name].append(fn(url, args.in_flight))
            for name, measured in runs.items():
                cpu, wall, peak = sorted(measured)[len(measured) // 2]
                print(f"| {name} | {cpu:.3f} | {wall:.2f} | {peak} |", flush=True)
                recorder.row(client=name, members=args.in_flight, cpu_ms_per_call=round(cpu, 3), wall_s=round(wall, 2),
                             peak_ats_in_flight=peak, runs=[list(r) for r in measured])
        recorder.note(f"median of {args.repeat} alternating runs; server latency {args.latency_ms} ms")
        print(f"# saved {recorder.save().relative_to(ROOT)}")
        return
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
