"""Resource limits of the OPC UA server (a security audit): the size of a request, the number of
connections, the advertised OperationLimits, and no session for an untrusted certificate. With
asyncua's client on 127.0.0.1; the server runs in a child process where its memory is measured."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.common.utils import Buffer
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.server import uaprocessor
from asyncua.ua.ua_binary import struct_to_binary
from conftest import HOST, free_port, wait_for

from gateway.adapter import AdapterContext
from gateway.bus import Bus
from protocols.opcua.config import OpcuaServer
from protocols.opcua.pki import ensure_certificate
from protocols.opcua.server import (
    MAX_CHUNKS,
    MAX_MESSAGE,
    OPERATIONS,
    OpcuaServerAdapter,
    _RequestLimits,
    operation_count,
)

REPO = Path(__file__).resolve().parent.parent
MAX_NODES_PER_READ = ua.NodeId(
    ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead
)


def server(tmp_path: Path, **settings: Any) -> OpcuaServerAdapter:
    config = OpcuaServer.model_validate(
        {
            "host": HOST,
            "port": free_port(),
            "anonymous": True,
            "security": {"allow_none": True, "pki_dir": str(tmp_path / "pki")},
            **settings,
        }
    )
    return OpcuaServerAdapter("limits", config, AdapterContext(Bus(), "limits"))


def _read(nodes: int, node: ua.NodeId | None = None) -> ua.ReadParameters:
    params = ua.ReadParameters()
    item = ua.ReadValueId(
        NodeId=node or ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime),
        AttributeId=ua.AttributeIds.Value,
    )
    params.NodesToRead = [item] * nodes
    return params


# -- the count of operations, read from the encoding ----------------------------------------


def _encoded(request: int, n: int) -> Buffer:
    """The parameters of the request with encoding id ``request``, holding ``n`` operations."""
    node, item = ua.NodeId(2258), ua.ReadValueId(NodeId=ua.NodeId(2258))
    p: Any
    if request == ua.ObjectIds.ReadRequest_Encoding_DefaultBinary:
        p = ua.ReadParameters(MaxAge=5.0, NodesToRead=[item] * n)
    elif request == ua.ObjectIds.HistoryReadRequest_Encoding_DefaultBinary:
        p = ua.HistoryReadParameters(
            HistoryReadDetails=ua.ReadRawModifiedDetails(NumValuesPerNode=3),
            NodesToRead=[ua.HistoryReadValueId(NodeId=node)] * n,
        )
    elif request == ua.ObjectIds.WriteRequest_Encoding_DefaultBinary:
        p = ua.WriteParameters(NodesToWrite=[ua.WriteValue(NodeId=node)] * n)
    elif request == ua.ObjectIds.HistoryUpdateRequest_Encoding_DefaultBinary:
        p = ua.HistoryUpdateParameters(HistoryUpdateDetails=[ua.UpdateDataDetails()] * n)
    elif request == ua.ObjectIds.CallRequest_Encoding_DefaultBinary:
        p = ua.CallParameters(MethodsToCall=[ua.CallMethodRequest(ObjectId=node)] * n)
    elif request == ua.ObjectIds.BrowseRequest_Encoding_DefaultBinary:
        view = ua.ViewDescription(ViewId=ua.NodeId("a view", 3), ViewVersion=7)
        p = ua.BrowseParameters(
            View=view, RequestedMaxReferencesPerNode=9, NodesToBrowse=[ua.BrowseDescription()] * n
        )
    elif request == ua.ObjectIds.BrowseNextRequest_Encoding_DefaultBinary:
        p = ua.BrowseNextParameters(ContinuationPoints=[b"cp"] * n)
    elif request in (
        ua.ObjectIds.RegisterNodesRequest_Encoding_DefaultBinary,
        ua.ObjectIds.UnregisterNodesRequest_Encoding_DefaultBinary,
    ):
        p = ua.RegisterNodesParameters(NodesToRegister=[node] * n)
    elif request == ua.ObjectIds.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary:
        p = ua.TranslateBrowsePathsToNodeIdsParameters(BrowsePaths=[ua.BrowsePath()] * n)
    elif request == ua.ObjectIds.AddNodesRequest_Encoding_DefaultBinary:
        p = ua.AddNodesParameters(NodesToAdd=[ua.AddNodesItem()] * n)
    elif request == ua.ObjectIds.AddReferencesRequest_Encoding_DefaultBinary:
        p = ua.AddReferencesParameters(ReferencesToAdd=[ua.AddReferencesItem()] * n)
    elif request == ua.ObjectIds.DeleteNodesRequest_Encoding_DefaultBinary:
        p = ua.DeleteNodesParameters(NodesToDelete=[ua.DeleteNodesItem()] * n)
    elif request == ua.ObjectIds.DeleteReferencesRequest_Encoding_DefaultBinary:
        p = ua.DeleteReferencesParameters(ReferencesToDelete=[ua.DeleteReferencesItem()] * n)
    elif request == ua.ObjectIds.CreateMonitoredItemsRequest_Encoding_DefaultBinary:
        create = ua.MonitoredItemCreateRequest(ItemToMonitor=item)
        p = ua.CreateMonitoredItemsParameters(SubscriptionId=4, ItemsToCreate=[create] * n)
    elif request == ua.ObjectIds.ModifyMonitoredItemsRequest_Encoding_DefaultBinary:
        modify = ua.MonitoredItemModifyRequest(MonitoredItemId=1)
        p = ua.ModifyMonitoredItemsParameters(SubscriptionId=4, ItemsToModify=[modify] * n)
    elif request == ua.ObjectIds.SetMonitoringModeRequest_Encoding_DefaultBinary:
        p = ua.SetMonitoringModeParameters(SubscriptionId=4, MonitoredItemIds=[1] * n)
    elif request == ua.ObjectIds.DeleteMonitoredItemsRequest_Encoding_DefaultBinary:
        p = ua.DeleteMonitoredItemsParameters(SubscriptionId=4, MonitoredItemIds=[1] * n)
    else:
        raise AssertionError(f"no sample for request {request}")
    return Buffer(struct_to_binary(p))


@pytest.mark.parametrize("request_id", sorted(OPERATIONS))
def test_the_count_of_operations_is_read_without_decoding(request_id: int) -> None:
    _, skip = OPERATIONS[request_id]
    for n in (0, 1, 3):
        parameters = _encoded(request_id, n)
        assert operation_count(skip, parameters) == n
        assert parameters.cur_pos == 0  # not consumed: asyncua decodes it next


# -- OperationLimits ------------------------------------------------------------------------


async def test_a_read_past_max_nodes_per_read_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server advertises MaxNodesPerRead = 10,000 and answered a Read of 1,000,000 nodes
    (the event loop stalled 11 s decoding it): now one past the limit is BadTooManyOperations,
    answered before its items are decoded."""
    decoded: list[tuple[str, int]] = []
    real: Callable[..., Any] = uaprocessor.struct_from_binary

    def spy(objtype: Any, data: Any) -> Any:
        result = real(objtype, data)
        if isinstance(result, ua.ReadParameters | ua.BrowseParameters):
            decoded.append(
                (
                    type(result).__name__,
                    len(
                        result.NodesToRead
                        if isinstance(result, ua.ReadParameters)
                        else result.NodesToBrowse
                    ),
                )
            )
        return result

    monkeypatch.setattr(uaprocessor, "struct_from_binary", spy)
    adapter = server(tmp_path)
    async with adapter, Client(adapter.endpoint_url) as client:
        limit = await client.get_node(MAX_NODES_PER_READ).read_value()
        assert limit == 10_000
        results = await client.uaclient.read(_read(limit))
        assert len(results) == limit and results[0].StatusCode.is_good()
        with pytest.raises(ua.uaerrors.BadTooManyOperations):
            await client.uaclient.read(_read(limit + 1))
        assert ("ReadParameters", limit + 1) not in decoded
        browse = ua.BrowseParameters()
        browse.NodesToBrowse = [ua.BrowseDescription(NodeId=ua.NodeId(85))] * (limit + 1)
        with pytest.raises(ua.uaerrors.BadTooManyOperations):
            await client.uaclient.browse(browse)
        # the session goes on
        assert (await client.uaclient.read(_read(1)))[0].StatusCode.is_good()
    assert decoded[0] == ("ReadParameters", 1)  # the spy saw asyncua decode


# -- connections ----------------------------------------------------------------------------


async def test_connections_past_max_connections_are_refused(tmp_path: Path) -> None:
    """1,100 idle connections took every file descriptor of the process (asyncua's limit is
    1,000): past ``max_connections`` a newcomer is closed at once, the others keep working."""
    adapter = server(tmp_path, max_connections=3)
    async with adapter, Client(adapter.endpoint_url) as client:
        idle = [await asyncio.open_connection(HOST, adapter.config.port) for _ in range(2)]
        assert adapter.server is not None and adapter.server.bserver is not None
        clients = adapter.server.bserver.clients
        await wait_for(lambda: len(clients) == 3, message="three connections")
        reader, writer = await asyncio.open_connection(HOST, adapter.config.port)
        start = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        assert time.monotonic() - start < 2
        writer.close()
        assert len(clients) == 3
        assert (await client.uaclient.read(_read(1)))[0].StatusCode.is_good()
        idle[0][1].close()
        await wait_for(lambda: len(clients) == 2, message="an idle one gone")
        async with Client(adapter.endpoint_url) as another:
            assert (await another.uaclient.read(_read(1)))[0].StatusCode.is_good()
        for _, w in idle[1:]:
            w.close()


async def test_clients_are_not_told_our_request_limit_as_theirs_for_responses(
    tmp_path: Path,
) -> None:
    """With 4 MiB in the Acknowledge, node-opcua and asyncua clients took it as the limit of our
    responses: a Publish catching up a backlog (4.26 MB) cut the connection. The client keeps
    its own limit (asyncua's and node-opcua's: none); requests are still held to ours."""
    adapter = server(tmp_path)
    async with adapter, Client(adapter.endpoint_url) as client:
        protocol = client.uaclient.protocol
        assert protocol is not None
        limits = protocol._connection._limits
        assert (limits.max_message_size, limits.max_chunk_count) == (0, 0)
        assert (await client.uaclient.read(_read(1)))[0].StatusCode.is_good()
    hello = ua.Hello()
    hello.ReceiveBufferSize = hello.SendBufferSize = 65535
    hello.MaxMessageSize, hello.MaxChunkCount = 16 << 20, 300
    ours = _RequestLimits(65535, 65535, MAX_CHUNKS, MAX_MESSAGE)
    ack = ours.create_acknowledge_and_set_limits(hello)
    assert (ack.MaxMessageSize, ack.MaxChunkCount) == (16 << 20, 300)  # the client's own
    assert (ours.max_message_size, ours.max_chunk_count) == (MAX_MESSAGE, 300)  # enforced


# -- the size of a request ------------------------------------------------------------------

SERVER = """
import asyncio, sys
from gateway.adapter import AdapterContext
from gateway.bus import Bus
from protocols.opcua.config import OpcuaServer
from protocols.opcua.server import OpcuaServerAdapter

async def main():
    config = OpcuaServer.model_validate({
        "host": sys.argv[1], "port": int(sys.argv[2]), "anonymous": True,
        "security": {"allow_none": True, "pki_dir": sys.argv[3]},
    })
    async with OpcuaServerAdapter("big", config, AdapterContext(Bus(), "big")):
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_an_oversized_request_is_refused_without_holding_it(tmp_path: Path) -> None:
    """A Read of 95 MB (1,520 NodeIds of 65 KB) from a session not even activated was held
    whole before its answer (BadSessionNotActivated): 12 such connections took the server to
    1.4 GB. Now a request is refused (BadRequestTooLarge, the connection closed) once its
    chunks pass the message size limit, and the server's peak memory does not follow it."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER,
        HOST,
        str(port),
        str(tmp_path / "pki"),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        client = Client(f"opc.tcp://{HOST}:{port}/protocol-brain")
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            await client.create_session()  # not activated
            before = _peak_rss_kb(proc.pid)
            big = ua.NodeId("x" * 65_000, 1)
            with pytest.raises((ua.uaerrors.BadRequestTooLarge, ConnectionError)):
                await client.uaclient.read(_read(500, big))  # 32.5 MB
            grown = _peak_rss_kb(proc.pid) - before
            assert grown < 16_000, f"the server's peak memory grew {grown} kB"
        finally:
            client.disconnect_socket()
        # the server goes on
        async with Client(f"opc.tcp://{HOST}:{port}/protocol-brain") as another:
            assert (await another.uaclient.read(_read(1)))[0].StatusCode.is_good()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


# -- certificates ---------------------------------------------------------------------------


async def test_an_untrusted_certificate_gets_no_session(tmp_path: Path) -> None:
    """A client with any certificate got a session (its certificate was checked only when it
    activated it); now CreateSession is refused and no session is made."""
    adapter = server(
        tmp_path,
        anonymous=False,
        security={
            "endpoints": [{"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}],
            "pki_dir": str(tmp_path / "pki"),
        },
    )
    async with adapter:
        cert, key = await ensure_certificate(tmp_path / "stranger", "urn:stranger", "localhost")
        client = Client(adapter.endpoint_url)
        client.application_uri = "urn:stranger"
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=str(cert),
            private_key=str(key),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        await client.connect_socket()
        try:
            await client.send_hello()
            await client.open_secure_channel()
            with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
                await client.create_session()
        finally:
            client.disconnect_socket()
        assert len(adapter.sessions) == 0
        assert adapter.status()["certificates_refused"] == 1
