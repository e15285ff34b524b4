"""Status codes of the OPC UA server for operations it will not do, as OPC UA Part 4 gives them:
per item, not as a fault of the whole service, and naming what is wrong (an attribute the node
does not have is BadAttributeIdInvalid, one it has but nobody may write is BadNotWritable).

Checked with asyncua's client and node-opcua's (a peer we did not write), the latter through a
small inline script run in tests/interop/node; once only, since node-opcua takes seconds to load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from asyncua import Client, ua
from test_opcua_server import EVERYONE, Plant, plant_gateway, run_node, write_many, writer

from protocols.modbus.simulator import Simulator

A = ua.AttributeIds
SERVER = "i=2253"
GET_MONITORED_ITEMS = "i=11492"  # a method of the Server object; its argument is a UInt32

# Reads {"pki", "url", "calls": [{objectId, methodId}]} from stdin and makes one anonymous Call
# request (each method given a UInt32 0); prints {"calls": [status...]} or {"error": message}.
NODE_SCRIPT = r"""
const { OPCUAClient, DataType, MessageSecurityMode, SecurityPolicy, UserTokenType } =
    require("node-opcua-client");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");
(async () => {
    let text = "";
    for await (const chunk of process.stdin) text += chunk;
    const plan = JSON.parse(text);
    const certificateManager = new OPCUACertificateManager({
        rootFolder: plan.pki, automaticallyAcceptUnknownCertificate: true });
    await certificateManager.initialize();
    const client = OPCUAClient.create({
        clientCertificateManager: certificateManager,
        securityMode: MessageSecurityMode.None, securityPolicy: SecurityPolicy.None,
        endpointMustExist: false, connectionStrategy: { maxRetry: 0 }, keepSessionAlive: false });
    await client.connect(plan.url);
    try {
        const session = await client.createSession({ type: UserTokenType.Anonymous });
        try {
            const results = await session.call(plan.calls.map((c) => ({
                objectId: c.objectId, methodId: c.methodId,
                inputArguments: [{ dataType: DataType.UInt32, value: 0 }],
            })));
            console.log(JSON.stringify({ calls: results.map((r) => r.statusCode.name) }));
        } finally {
            await session.close();
        }
    } finally {
        await client.disconnect();
    }
})().then(() => process.exit(0), (err) => {
    console.log(JSON.stringify({ error: String((err && err.message) || err) }));
    process.exit(1);
});
"""


async def node_client(plan: dict[str, Any], limit: float = 20) -> dict[str, Any]:
    """Run NODE_SCRIPT with ``plan``; its JSON lines merged into one dict."""
    _, lines, err = await run_node(("-e", NODE_SCRIPT), plan, limit)
    found: dict[str, Any] = {}
    for line in lines:
        found.update(line)
    if not found:
        pytest.fail(f"node-opcua client failed: {err.decode(errors='replace')[-2000:]}")
    return found


def call_items(plant: Plant) -> list[tuple[str, str]]:
    """(object, method) of a method that exists, an unknown object, an unknown method."""
    return [
        (SERVER, GET_MONITORED_ITEMS),
        (plant.node_id("nope"), GET_MONITORED_ITEMS),
        (SERVER, plant.node_id("nope")),
    ]


async def call_many(client: Client, items: list[tuple[str, str]]) -> list[str]:
    """One Call request; the status name of each item."""
    results = await client.uaclient.call(
        [
            ua.CallMethodRequest(
                ObjectId=ua.NodeId.from_string(obj),
                MethodId=ua.NodeId.from_string(method),
                InputArguments=[ua.Variant(0, ua.VariantType.UInt32)],
            )
            for obj, method in items
        ]
    )
    return [r.StatusCode.name for r in results]


async def test_anonymous_call_is_refused_item_by_item(simulator: Simulator, tmp_path: Path) -> None:
    """An anonymous Call gets a CallResponse with BadUserAccessDenied for the method it may not
    run, and the same unknown-node codes anybody gets (it was a ServiceFault, which node-opcua
    raises as an error for the whole request); a user's call still runs."""
    async with plant_gateway(simulator, tmp_path, server=EVERYONE) as plant:
        items = call_items(plant)
        refused = ["BadUserAccessDenied", "BadNodeIdUnknown", "BadMethodInvalid"]
        plan = {
            "pki": str(tmp_path / "node-pki"),
            "url": plant.url,
            "calls": [{"objectId": o, "methodId": m} for o, m in items],
        }
        assert (await node_client(plan)).get("calls") == refused
        async with Client(plant.url) as anonymous:
            assert await call_many(anonymous, items) == refused
        async with writer(plant.url) as op:
            ran, *unknown = await call_many(op, items)
        # asyncua ran it (and implements no GetMonitoredItems: BadNothingToDo)
        assert ran != "BadUserAccessDenied"
        assert unknown == refused[1:]


async def test_write_to_an_absent_attribute_is_attribute_id_invalid(
    simulator: Simulator, tmp_path: Path
) -> None:
    """BadAttributeIdInvalid for an attribute the node does not have (a variable has no
    EventNotifier, an Object no DataType, no node an attribute 99); BadNotWritable stays for
    attributes it has that nobody may write, whoever asks."""
    async with plant_gateway(simulator, tmp_path, server=EVERYONE) as plant:
        level, folder = plant.node_id("level"), f"ns={plant.ns};s=Plant"
        items: list[tuple[str, int]] = [
            (level, A.EventNotifier),  # one of our variables
            (level, 99),
            (plant.node_id("temp"), A.EventNotifier),
            (folder, A.DataType),  # one of our folders
            ("i=2294", A.EventNotifier),  # a standard variable
            (SERVER, A.DataType),  # a standard object
            (SERVER, 99),
            (level, A.DataType),  # present, not writable
            (plant.node_id("temp"), A.Value),
            (SERVER, A.EventNotifier),
        ]
        expected = ["BadAttributeIdInvalid"] * 7 + ["BadNotWritable"] * 3
        for client in (Client(plant.url), writer(plant.url)):
            async with client:
                # asyncua's AttributeIds has no 99; the wire carries any UInt32
                request = [(n, cast(ua.AttributeIds, a), 1) for n, a in items]
                assert await write_many(client, request) == expected, client
        # refusals of writes to our variables are counted like any other
        refused = plant.server.status()["writes_refused"]
        assert refused["BadAttributeIdInvalid"] == 2 * 3
