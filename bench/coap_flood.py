"""CoAP request flood: the gateway's memory and its legitimate data flow under a flood of CONs.

    python bench/coap_flood.py [--sockets 200] [--duration 30] [--after 20]

A simulated Modbus device has one holding register that counts up each second; `gateway run`
polls it every second and serves it as the CoAP resource ``/d0/r0``. A flooder process sends
confirmable GETs for it from ``--sockets`` UDP sockets on 127.0.0.1, a new message ID (and
token) each time, as fast as it can for ``--duration`` seconds, and never reads a response:
every request is a new exchange the server must remember for deduplication (RFC 7252 4.5).
Meanwhile one legitimate client observes ``/d0/r0`` and another GETs it once a second.

Figures: the gateway's RSS before, at its peak, at the flood's end and ``--after`` seconds
later; the requests sent per second; the longest gap between two notifications to the observer
during the flood (1 s when unaffected) and the legitimate GETs that were answered.
Prints its figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_folder,
    cpu_seconds,
    free_port,
    modbus_to_coap_yaml,
    print_result,
    run_bench,
    start_gateway,
    start_simulator,
    stop,
)

MB = 1024 * 1024


def con_get(mid: int, token: int) -> bytes:
    """A CON GET /d0/r0 with a 4-byte token (RFC 7252 section 3)."""
    header = bytes([0x44, 0x01]) + mid.to_bytes(2, "big") + token.to_bytes(4, "big")
    return header + b"\xb2d0" + b"\x02r0"  # Uri-Path (11) "d0", then Uri-Path "r0"


def flood(port: int, sockets: int, duration: float, sent: Any) -> None:
    """Send CON GETs round-robin from ``sockets`` sockets until ``duration`` is over."""
    socks = []
    for _ in range(sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    count = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for i, s in enumerate(socks):
            try:
                s.send(con_get((count // sockets) & 0xFFFF, count))
            except OSError:  # a full buffer or a port not yet unreachable: the flood goes on
                pass
            count += 1
            if i % 50 == 0 and time.monotonic() >= deadline:
                break
    sent.value = count
    for s in socks:
        s.close()


async def legitimate(port: int, duration: float) -> dict[str, float]:
    """Observe /d0/r0 and GET it once a second for ``duration``; the gaps and answers."""
    from aiocoap import GET, Context, Message

    ctx = await Context.create_client_context()
    uri = f"coap://127.0.0.1:{port}/d0/r0"
    stamps: list[float] = []
    req = ctx.request(Message(code=GET, uri=uri, observe=0))
    await req.response

    async def watch() -> None:
        async for _ in req.observation:
            stamps.append(time.monotonic())

    watcher = asyncio.create_task(watch())
    start = time.monotonic()
    answered = asked = 0
    latencies: list[float] = []
    while time.monotonic() - start < duration:
        asked += 1
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(ctx.request(Message(code=GET, uri=uri)).response, 10)
            answered += 1
            latencies.append(time.monotonic() - t0)
        except Exception:  # lost under the flood: counted as not answered
            pass
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    end = time.monotonic()
    inside = [start, *(t for t in stamps if start <= t <= end), end]
    gap = max(b - a for a, b in zip(inside, inside[1:], strict=False))
    watcher.cancel()
    req.observation.cancel()
    await ctx.shutdown()
    return {
        "observer_max_gap_s": round(gap, 2),
        "gets_answered": answered,
        "gets_asked": asked,
        "get_max_latency_s": round(max(latencies, default=float("nan")), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=20.0, help="seconds watched after")
    args = parser.parse_args()

    with bench_folder("pb-bench-coap-flood-") as workdir:
        procs: list[subprocess.Popen[str]] = []
        flooder: multiprocessing.Process | None = None
        try:
            sim, ports = start_simulator(1, 1, "--count-all")
            procs.append(sim)
            coap_port = free_port()
            config = workdir / "gateway.yaml"
            config.write_text(modbus_to_coap_yaml(ports[0], 1, coap_port))
            gw = start_gateway(config, workdir / "gateway.log")
            procs.append(gw)
            time.sleep(4.0)  # the gateway loads and polls once
            gw_ps = psutil.Process(gw.pid)
            rss_before = gw_ps.memory_info().rss
            sent = multiprocessing.Value("q", 0)
            flooder = multiprocessing.Process(
                target=flood, args=(coap_port, args.sockets, args.duration, sent)
            )
            cpu0, t0 = cpu_seconds(gw_ps), time.monotonic()
            flooder.start()
            peak = rss_before

            async def during() -> dict[str, float]:
                nonlocal peak
                task = asyncio.create_task(legitimate(coap_port, args.duration))
                while not task.done():
                    peak = max(peak, gw_ps.memory_info().rss)
                    await asyncio.wait([task], timeout=0.5)
                return task.result()

            flow = asyncio.run(during())
            flooder.join(30)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(gw_ps) - cpu0
            rss_end = gw_ps.memory_info().rss
            time.sleep(args.after)
            rss_after = gw_ps.memory_info().rss
            gw.send_signal(signal.SIGTERM)
            gw.wait(30)
            result = {
                "sockets": args.sockets,
                "duration_s": args.duration,
                "requests_sent_per_s": round(sent.value / args.duration),
                "rss_before_mb": round(rss_before / MB),
                "rss_peak_mb": round(peak / MB),
                "rss_end_of_flood_mb": round(rss_end / MB),
                f"rss_{args.after:g}s_after_mb": round(rss_after / MB),
                "gateway_cpu_pct_of_one_core": round(100 * cpu / wall, 1),
                **flow,
                "cores": os.cpu_count(),
            }
            print_result(result)
        finally:
            if flooder is not None and flooder.is_alive():
                flooder.terminate()
                flooder.join(5)
            stop(procs)


if __name__ == "__main__":
    sys.exit(run_bench(main))
