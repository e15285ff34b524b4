"""MaxNotificationsPerPublish: a subscription's backlog reaches the client in Publish responses
of at most that many notifications (at most `PUBLISH_CAP`; 0 too), MoreNotifications set while
more are left, every data change once and in order, sequence numbers one after the other,
Republish and acknowledgements as before. asyncua's server sent the whole backlog in one
response. The backlog: the client disables publishing, the values change many times, the client
enables it again. With node-opcua's client and asyncua's, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.server.internal_subscription import InternalSubscription
from conftest import HOST, NODE_DIR, free_port, node_binary, wait_for

from gateway.config import load_config_text
from gateway.runtime import Gateway
from gateway.types import Message, Sample
from protocols.opcua import publish
from protocols.opcua.publish import PUBLISH_CAP, LimitedSubscription
from protocols.opcua.server import ITEM_QUEUE, OpcuaServerAdapter

ITEMS = 30  # monitored items
CHANGES = 40  # changes of each while the client does not publish: 1,200 in all


def config(pki: Path) -> str:
    """A server with ITEMS int32 points of device ``meter`` (never connected: the test sends
    the samples itself)."""
    points = "\n".join(
        f"      - {{name: p{i}, table: holding, address: {2 * i}, type: int32, poll: slow}}"
        for i in range(ITEMS)
    )
    return f"""
gateway: {{name: plant}}
devices:
  meter:
    protocol: modbus
    host: {HOST}
    port: {free_port()}
    poll_groups: {{slow: {{interval: 60}}}}
    points:
{points}
endpoints:
  opcua:
    protocol: opcua
    role: server
    host: {HOST}
    port: {free_port()}
    anonymous: true
    security: {{allow_none: true, pki_dir: {pki}}}
bridges:
  - {{name: up, from: meter, to: opcua}}
"""


class Served:
    def __init__(self, adapter: OpcuaServerAdapter, route: Any) -> None:
        self.adapter = adapter
        self.route = route
        self.nodes = [f"ns={adapter.namespace_index};s=meter.p{i}" for i in range(ITEMS)]

    async def change(self, rounds: int, start: int = 0) -> None:
        """Every point takes the values start, start+1, ... (``rounds`` of them)."""
        for k in range(start, start + rounds):
            samples = tuple(Sample.now(f"p{i}", 1000 * i + k) for i in range(ITEMS))
            await self.adapter.send(Message.telemetry("meter", samples), self.route)

    def expected(self, rounds: int, start: int = 0) -> dict[str, list[int]]:
        return {
            node: [1000 * i + k for k in range(start, start + rounds)]
            for i, node in enumerate(self.nodes)
        }


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    gateway = Gateway(load_config_text(config(tmp_path / "pki"), "plant.yaml"))
    adapter = gateway.adapters["opcua"]
    assert isinstance(adapter, OpcuaServerAdapter)
    (bridge,) = gateway.bridges
    async with adapter:
        yield Served(adapter, bridge.config.route)


# -- node-opcua ------------------------------------------------------------------------------


async def test_node_opcua_gets_a_backlog_in_responses_of_its_max_notifications(
    served: Served, tmp_path: Path
) -> None:
    """node-opcua asks for 7 notifications per Publish and keeps several Publish requests
    queued: 1,200 data changes come in responses of at most 7, none lost, none twice, each
    item's in order."""
    limit, total = 7, ITEMS * CHANGES
    plan = {
        "pki": str(tmp_path / "node-pki"),
        "url": served.adapter.endpoint_url,
        "nodes": served.nodes,
        "maxNotificationsPerPublish": limit,
        "queueSize": ITEM_QUEUE,
        "interval": 50,
        "expect": total,
        "timeout": 30000,
    }
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        "opcua_publish_client.js",
        cwd=NODE_DIR,  # where require() finds node-opcua
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lines: list[Any] = []

    async def line() -> Any:
        """The next JSON line node prints (node-opcua prints its own log lines too)."""
        assert proc.stdout is not None and proc.stderr is not None
        while not (raw := await proc.stdout.readline()).startswith(b"{"):
            if not raw:
                err = (await proc.stderr.read()).decode(errors="replace")
                pytest.fail(f"node-opcua client ended: {lines} {err[-2000:]}")
        lines.append(json.loads(raw))
        return lines[-1]

    try:
        proc.stdin.write(json.dumps(plan).encode() + b"\n")
        assert await asyncio.wait_for(line(), 20) == {"paused": True}
        await served.change(CHANGES)
        proc.stdin.write(b"go\n")
        while "done" not in lines[-1] and "error" not in lines[-1]:
            await asyncio.wait_for(line(), 40)
    finally:
        proc.stdin.close()  # a client still waiting for "go" ends
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert "error" not in lines[-1], lines[-1]
    responses = next(x["responses"] for x in lines if "responses" in x)
    changes = next(x["changes"] for x in lines if "changes" in x)

    assert changes == served.expected(CHANGES)  # every change, once, in order
    counts = [r["count"] for r in responses]
    assert sum(counts) == total
    assert max(counts) <= limit, counts  # asyncua: all 1,200 in one response
    assert len(responses) >= total // limit
    assert all(r["more"] for r in responses[:-1]), [r["more"] for r in responses]
    assert not responses[-1]["more"]
    seqs = [r["seq"] for r in responses]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # acknowledged as they came: the server keeps only the last few for Republish
    assert max(len(r["available"]) for r in responses) <= 20
    assert all(r["seq"] in r["available"] for r in responses)


# -- asyncua's client ------------------------------------------------------------------------


class Recorder:
    """A subscription's Publish results, as asyncua's client receives them; the first one
    with notifications once `armed` is also asked for again with Republish."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.results: list[ua.PublishResult] = []
        self.republished: tuple[ua.NotificationMessage, ua.NotificationMessage] | None = None
        self.armed = False
        self.before = 0  # notifications before `armed`

    async def __call__(self, result: ua.PublishResult) -> None:
        message = result.NotificationMessage
        if not self.armed:
            self.before += sum(len(d.MonitoredItems) for d in message.NotificationData)
            return
        if not message.NotificationData:
            return
        self.results.append(result)
        if self.republished is None:  # not yet acknowledged: the client acks in its next Publish
            again = await self.client.uaclient.session.republish(
                result.SubscriptionId, message.SequenceNumber
            )
            self.republished = (message, again)

    def values(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for result in self.results:
            for data in result.NotificationMessage.NotificationData:
                assert isinstance(data, ua.DataChangeNotification)
                for item in data.MonitoredItems:
                    out.setdefault(item.ClientHandle, []).append(item.Value.Value.Value)
        return out

    def counts(self) -> list[int]:
        return [
            sum(len(d.MonitoredItems) for d in r.NotificationMessage.NotificationData)
            for r in self.results
        ]


@pytest.mark.parametrize(("requested", "limit"), [(7, 7), (0, PUBLISH_CAP), (5000, PUBLISH_CAP)])
async def test_asyncua_client_gets_a_backlog_in_responses_of_the_limit(
    served: Served, requested: int, limit: int
) -> None:
    """asyncua's client keeps one Publish request at a time: each is answered at once while
    more notifications are left. 0 (no limit of the client's) and more than the server's cap
    are held to `PUBLISH_CAP`; a partial response is republished as it was sent."""
    total = ITEMS * CHANGES
    async with Client(served.adapter.endpoint_url) as client:
        recorder = Recorder(client)
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=50,
            RequestedLifetimeCount=600,
            RequestedMaxKeepAliveCount=10,
            MaxNotificationsPerPublish=requested,
            PublishingEnabled=True,
        )
        sub = await client.uaclient.create_subscription(params, recorder)
        items = ua.CreateMonitoredItemsParameters(
            SubscriptionId=sub.SubscriptionId,
            TimestampsToReturn=ua.TimestampsToReturn.Both,
            ItemsToCreate=[
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(
                        NodeId=ua.NodeId.from_string(node), AttributeId=ua.AttributeIds.Value
                    ),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=ua.MonitoringParameters(
                        ClientHandle=i, QueueSize=ITEM_QUEUE, DiscardOldest=True
                    ),
                )
                for i, node in enumerate(served.nodes)
            ],
        )
        created = await client.uaclient.create_monitored_items(items)
        assert all(r.StatusCode.is_good() for r in created)
        mode = ua.SetPublishingModeParameters(SubscriptionIds=[sub.SubscriptionId])
        await served.change(1)  # values before the pause (after the initial ones), not recorded
        await wait_for(lambda: recorder.before == 2 * ITEMS, message="the values before")
        mode.PublishingEnabled = False
        await client.uaclient.set_publishing_mode(mode)
        await served.change(CHANGES, start=1)
        recorder.armed = True
        mode.PublishingEnabled = True
        await client.uaclient.set_publishing_mode(mode)
        await wait_for(lambda: sum(recorder.counts()) >= total, timeout=20, message="backlog")
        await asyncio.sleep(0.3)  # anything extra shows up meanwhile

        expected = served.expected(CHANGES, start=1)
        assert recorder.values() == {i: expected[node] for i, node in enumerate(served.nodes)}
        counts = recorder.counts()
        assert max(counts) == limit, counts  # asyncua: all 1,200 in one response
        assert [r.MoreNotifications for r in recorder.results] == [True] * (len(counts) - 1) + [
            False
        ]
        seqs = [r.NotificationMessage.SequenceNumber for r in recorder.results]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert recorder.republished is not None
        sent, again = recorder.republished
        assert again.SequenceNumber == sent.SequenceNumber
        assert again.NotificationData == sent.NotificationData

        # ModifySubscription changes the limit: a new backlog comes 3 at a time
        await client.uaclient.update_subscription(
            ua.ModifySubscriptionParameters(
                SubscriptionId=sub.SubscriptionId,
                RequestedPublishingInterval=50,
                RequestedLifetimeCount=600,
                RequestedMaxKeepAliveCount=10,
                MaxNotificationsPerPublish=3,
            )
        )
        recorder.results.clear()
        mode.PublishingEnabled = False
        await client.uaclient.set_publishing_mode(mode)
        await served.change(2, start=CHANGES + 1)
        mode.PublishingEnabled = True
        await client.uaclient.set_publishing_mode(mode)
        await wait_for(lambda: sum(recorder.counts()) >= 2 * ITEMS, timeout=10, message="more")
        assert max(recorder.counts()) == 3
        expected = served.expected(2, start=CHANGES + 1)
        assert recorder.values() == {i: expected[node] for i, node in enumerate(served.nodes)}


# -- another asyncua -------------------------------------------------------------------------


def test_a_subscription_of_unknown_shape_is_left_as_asyncua_made_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a later asyncua rename the queues the limit takes from, its subscriptions are
    left unlimited (not broken), and a warning says so once."""
    monkeypatch.setattr(publish, "_warned", False)
    renamed = InternalSubscription.__new__(InternalSubscription)
    renamed._triggered_datachanges = {}  # but no _triggered_events
    with caplog.at_level(logging.WARNING, logger="protocols.opcua.publish"):
        publish.limit({5: renamed}, 5, 7)
        publish.limit({5: renamed}, 5, 7)
        publish.limit(None, 5, 7)  # no subscriptions where asyncua kept them
        publish.limit({}, 5, 7)  # gone meanwhile
    assert type(renamed) is InternalSubscription
    assert [r.getMessage().count("not enforced") for r in caplog.records] == [1]
    assert not isinstance(renamed, LimitedSubscription)
