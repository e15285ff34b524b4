"""Messages per second through the bus to 1 and to 10 subscribers, on one core.

    python bench/bus.py [--messages 200000] [--keep-last]

One producer publishes telemetry messages (one sample each) while the subscribers consume them
concurrently on the same event loop, so the figure includes queueing and wake-ups, not only
routing. ``--keep-last``: the bus keeps each point's newest sample as `gateway run`'s does
(`Bus.keep_last`, for the bridges a reload starts). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from gateway.bus import Bus
from gateway.types import Message, MessageKind, Sample


async def run(n_messages: int, n_subs: int, batch: int, keep_last: bool) -> dict[str, float]:
    bus = Bus()
    if keep_last:
        bus.keep_last()
    subs = [bus.subscribe("telemetry/+", maxsize=batch * 2, name=f"s{i}") for i in range(n_subs)]
    sample = Sample("p", 1.0)
    msgs = [
        Message("telemetry/dev", MessageKind.TELEMETRY, (sample,), origin="dev", seq=i)
        for i in range(batch)
    ]
    received = [0] * n_subs

    async def consume(i: int) -> None:
        sub = subs[i]
        while received[i] < n_messages:
            await sub.get()
            received[i] += 1

    consumers = [asyncio.create_task(consume(i)) for i in range(n_subs)]
    t0 = time.perf_counter()
    c0 = time.process_time()
    sent = 0
    while sent < n_messages:
        for m in msgs[: min(batch, n_messages - sent)]:
            await bus.publish(m)
        sent += min(batch, n_messages - sent)
        await asyncio.sleep(0)  # let consumers drain, as a real loop would
    await asyncio.gather(*consumers)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    dropped = sum(s.counters.dropped for s in subs)
    return {
        "messages_per_s": round(n_messages / wall),
        "deliveries_per_s": round(n_messages * n_subs / wall),
        "cpu_s": round(cpu, 3),
        "dropped": dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--keep-last", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    result: dict[str, object] = {"messages": args.messages, "keep_last": args.keep_last}
    for n_subs in (1, 10):
        r = asyncio.run(run(args.messages, n_subs, args.batch, args.keep_last))
        print(
            f"{n_subs:>2} subscriber(s): {r['messages_per_s']:>9,} msg/s "
            f"({r['deliveries_per_s']:,} deliveries/s, dropped {r['dropped']})"
        )
        result[f"subs_{n_subs}"] = r
    print(json.dumps(result))


if __name__ == "__main__":
    main()
