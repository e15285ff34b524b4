"""CoAP Observe: notifications per second delivered to many observers of many resources.

    python bench/coap_observe.py [--observers 100] [--resources 100] [--duration 30]

A simulated Modbus device has ``--resources`` holding registers that all count up each second;
`gateway run` polls it every second and serves every register as a CoAP resource. Each of
``--observers`` observers (its own aiocoap context, so its own UDP endpoint) observes every
resource, so ``observers x resources`` notifications per second are due. The observers run in
separate processes so that they are not measured as the gateway.

Prints its figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


async def observe(
    port: int, observers: int, resources: int, warmup: float, duration: float
) -> tuple[int, int, int]:
    """Run ``observers`` contexts observing every resource; count notifications measured."""
    from aiocoap import GET, Context, Message

    counts = {"measured": 0, "registered": 0, "failed": 0}
    measuring = False
    alive: list[object] = []  # aiocoap cancels an observation whose request is collected

    async def one_observer() -> None:
        ctx = await Context.create_client_context()
        for r in range(resources):  # one registration at a time: no burst of 10,000 requests
            msg = Message(code=GET, uri=f"coap://127.0.0.1:{port}/d0/r{r}", observe=0)
            msg.opt.accept = 0  # text/plain: the smallest notification
            req = ctx.request(msg)
            alive.append(req)

            def count(_response: object) -> None:
                if measuring:
                    counts["measured"] += 1

            req.observation.register_callback(count)
            try:
                await req.response
            except Exception:  # an overloaded server: count it, keep the others going
                counts["failed"] += 1
                continue
            counts["registered"] += 1

    await asyncio.gather(*(one_observer() for _ in range(observers)))
    await asyncio.sleep(warmup)
    measuring = True
    await asyncio.sleep(duration)
    measuring = False
    return counts["measured"], counts["registered"], counts["failed"]


def observer_process(args: tuple[int, int, int, float, float]) -> tuple[int, int, int]:
    return asyncio.run(observe(*args))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--observers", type=int, default=100)
    parser.add_argument("--resources", type=int, default=100)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=4, help="observer processes")
    args = parser.parse_args()

    with bench_folder("pb-bench-coap-") as workdir:
        procs: list[subprocess.Popen[str]] = []
        try:
            sim, ports = start_simulator(1, args.resources, "--count-all")
            procs.append(sim)
            coap_port = free_port()
            config = workdir / "gateway.yaml"
            config.write_text(modbus_to_coap_yaml(ports[0], args.resources, coap_port))
            gw = start_gateway(config, workdir / "gateway.log")
            procs.append(gw)
            time.sleep(3.0)  # the gateway loads and polls once
            gw_ps = psutil.Process(gw.pid)
            per_process = [args.observers // args.processes] * args.processes
            per_process[0] += args.observers - sum(per_process)
            jobs = [
                (coap_port, n, args.resources, args.warmup, args.duration) for n in per_process if n
            ]
            with multiprocessing.Pool(len(jobs)) as pool:
                pending = pool.map_async(observer_process, jobs)
                time.sleep(5.0 + args.warmup)  # registration, then the observers' own warm-up
                cpu0, t0 = cpu_seconds(gw_ps), time.monotonic()
                results = pending.get(timeout=args.duration + args.warmup + 120)
                wall = time.monotonic() - t0
                cpu = cpu_seconds(gw_ps) - cpu0
            measured = sum(m for m, _, _ in results)
            registered = sum(r for _, r, _ in results)
            failed = sum(f for _, _, f in results)
            gw.send_signal(signal.SIGTERM)
            gw.wait(30)
            result = {
                "observers": args.observers,
                "resources": args.resources,
                "observations": registered,
                "registrations_failed": failed,
                "expected_notifications_per_s": registered,
                "notifications_per_s": round(measured / args.duration),
                "gateway_cpu_pct_of_one_core": round(100 * cpu / wall, 1),
                "cores": os.cpu_count(),
            }
            print_result(result)
        finally:
            stop(procs)


if __name__ == "__main__":
    sys.exit(run_bench(main))
