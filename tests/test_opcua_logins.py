"""Logins at the OPC UA server: the debug log never shows a password, and a flood of wrong
passwords from one address is refused without an scrypt check each, logged by quota."""

from __future__ import annotations

import asyncio
import copy
import functools
import io
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from test_opcua_security import server_only

from gateway import cli, passwords
from gateway.passwords import hash_password
from gateway.streak import Throttle
from protocols.opcua import logins
from protocols.opcua.server import OpcuaServerAdapter

PASSWORD = "OpcClientSecret_Pp8"
USERS = [{"username": "opcuser", "password_hash": hash_password(PASSWORD)}]
OTHER_HOST = "127.0.0.2"  # another address of the loopback
FLOOD_S = 3.0


def users_server(tmp_path: Path) -> OpcuaServerAdapter:
    """A server with the unsecured None endpoint and one user (the audit's setting)."""
    return server_only(
        tmp_path, users=USERS, security={"allow_none": True, "pki_dir": str(tmp_path / "pki")}
    )


async def login(url: str, password: str, source: str | None = None, plain: bool = False) -> str:
    """A login of opcuser on the None endpoint: "Good" or the name of the refusal. ``plain``:
    the password sent unencrypted, as to a server whose token policy is None (ours asks for
    it encrypted with its certificate, even on the None endpoint)."""
    client = Client(url, timeout=10)
    client.set_user("opcuser")
    client.set_password(password)
    if plain:

        def no_encryption(token_type: ua.UserTokenType) -> ua.UserTokenPolicy:
            policy = copy.copy(Client.server_policy(client, token_type))
            policy.SecurityPolicyUri = None
            return policy

        client.server_policy = no_encryption  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    if source is not None:  # connect from that address (asyncua has no setting for it)
        loop.create_connection = functools.partial(  # type: ignore[method-assign]
            type(loop).create_connection, loop, local_addr=(source, 0)
        )
    try:
        async with client:
            return "Good"
    except ua.UaStatusCodeError as exc:
        return type(exc).__name__
    finally:
        if source is not None:
            del loop.create_connection  # the class's again


@pytest.fixture
def gateway_logging() -> Iterator[io.StringIO]:
    """`gateway.cli._setup_logging` as `gateway run` does it, its stderr a buffer here; the
    logging of the test run put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logging.getLogger("asyncua").level
    filtered = {
        name: logging.getLogger(name).filters[:] for name in logging.root.manager.loggerDict
    }
    root.handlers = []
    buffer = io.StringIO()
    stderr, sys.stderr = sys.stderr, buffer  # what basicConfig's handler writes to
    try:
        cli._setup_logging("debug")
    finally:
        sys.stderr = stderr
    try:
        yield buffer
    finally:
        root.handlers, level, library = saved
        root.setLevel(level)
        logging.getLogger("asyncua").setLevel(library)
        for name in logging.root.manager.loggerDict:  # the Throttles it added
            logger = logging.getLogger(name)
            for added in [f for f in logger.filters if f not in filtered.get(name, [])]:
                if isinstance(added, Throttle):
                    logger.removeFilter(added)


async def test_debug_log_shows_no_password(tmp_path: Path, gateway_logging: io.StringIO) -> None:
    """At log_level debug asyncua's client logs its ActivateSession request, the password in
    clear on a None endpoint: the gateway's log handler hides it, and keeps the line."""
    async with users_server(tmp_path) as server:
        assert await login(server.endpoint_url, PASSWORD, plain=True) == "Good"
        assert await login(server.endpoint_url, PASSWORD) == "Good"  # encrypted
    text = gateway_logging.getvalue()
    lines = [line for line in text.splitlines() if "Sending: ActivateSessionRequest" in line]
    assert len(lines) == 2, text[-3000:]
    token = "UserNameIdentityToken(PolicyId='username', UserName='opcuser', Password=<not shown>"
    assert all(token in line for line in lines), lines
    assert "<not shown>, EncryptionAlgorithm=None)" in lines[0]
    assert (
        "<not shown>, EncryptionAlgorithm='http://www.w3.org/2001/04/xmlenc#rsa-oaep'" in lines[1]
    )
    assert all("DEBUG   asyncua.client.ua_client.UASocketProtocol: " in line for line in lines)
    assert PASSWORD not in text and PASSWORD.encode().hex() not in text


async def test_a_flood_of_wrong_passwords_is_refused_unchecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After FAILURES_ALLOWED failed logins from one address, its logins are refused without
    an scrypt check until its backoff ends; the refusals' warnings name the address, at most
    LOG_QUOTA of them and a count line; another address still logs in, and this one after
    its backoff."""
    caplog.set_level(logging.WARNING, logger="protocols.opcua.server")
    monkeypatch.setattr(logins, "BACKOFF_MAX", 2.0)  # BACKOFF_FIRST 1 s, then 2 s
    checks: list[float] = []  # scrypt runs, old code or new
    on_loop: list[float] = []  # those that ran on the event loop's thread (must be none)
    loop_thread = threading.get_ident()
    scrypt = passwords._scrypt

    def counted(*args: Any) -> bytes:
        checks.append(time.monotonic())
        if threading.get_ident() == loop_thread:
            on_loop.append(checks[-1])
        return scrypt(*args)

    monkeypatch.setattr(passwords, "_scrypt", counted)
    async with users_server(tmp_path) as server:
        url = server.endpoint_url
        started = time.monotonic()
        answers: list[str] = []

        async def guesser() -> None:
            while time.monotonic() - started < FLOOD_S:
                answers.append(await login(url, "guess-1234"))

        await asyncio.gather(*(guesser() for _ in range(3)))  # 3 clients at once
        elapsed = time.monotonic() - started
        assert set(answers) == {"BadUserAccessDenied"}, answers
        # 5 checks, then per backoff end (after 1 s, then every 2 s) at most CHECKS_AT_ONCE
        bound = logins.FAILURES_ALLOWED + logins.CHECKS_AT_ONCE * (1 + int(elapsed))
        print(f"{len(answers)} attempts in {elapsed:.1f} s: {len(checks)} scrypt checks")
        assert len(checks) <= bound < len(answers), (len(checks), elapsed)
        assert checks and not on_loop, f"{len(on_loop)} of {len(checks)} checks on the loop"

        guard = server._users.logins  # type: ignore[union-attr]
        while not guard.blocked_for("127.0.0.1"):  # the backoff may just have ended
            assert await login(url, "guess-1234") == "BadUserAccessDenied"
        before = len(checks)
        assert await login(url, PASSWORD, source=OTHER_HOST) == "Good"  # another address
        assert len(checks) == before + 1
        assert guard.blocked_for("127.0.0.1")
        assert await login(url, PASSWORD) == "BadUserAccessDenied"  # unchecked meanwhile
        assert len(checks) == before + 1

        await asyncio.sleep(guard.blocked_for("127.0.0.1") + 0.1)
        assert await login(url, PASSWORD) == "Good"  # after its backoff
        assert await login(url, "guess-1234") == "BadUserAccessDenied"
        assert not guard.blocked_for("127.0.0.1")  # the success forgot the failures
        refused = server.status()["logins_refused"]
    lines = [r.getMessage() for r in caplog.records if r.name == "protocols.opcua.server"]
    said = [line for line in lines if line.startswith("OPC UA login refused for user")]
    assert len(said) == logins.LOG_QUOTA, lines
    assert all("'opcuser' from 127.0.0.1" in line for line in said), said
    assert any("unchecked for" in line for line in said), said
    (count,) = [line for line in lines if "more OPC UA logins refused" in line]
    assert count.startswith(f"{refused - logins.LOG_QUOTA} more OPC UA logins refused"), count
    assert f"from 127.0.0.1 ({refused - logins.LOG_QUOTA})" in count, count


def test_a_request_refused_while_blocked_is_not_checked_when_the_block_ends_before_asyncua_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The processor saw the request while its address was blocked; asyncua asks the user
    manager a moment later, after the block ended: the answer is the refusal, with no scrypt
    check (it would run on the event loop; a clean-clone run caught one there)."""
    now = [100.0]
    guard = logins.Logins({"opcuser": hash_password(PASSWORD)}, clock=lambda: now[0])
    for _ in range(logins.FAILURES_ALLOWED):
        guard._counted("10.0.0.9", "opcuser", False)
    assert guard.blocked_for("10.0.0.9") > 0
    verdict = logins.Verdict("10.0.0.9", blocked=True)  # what the processor found
    now[0] += 3600.0  # the block ends before asyncua calls get_user
    assert guard.blocked_for("10.0.0.9") == 0
    checked: list[str] = []
    monkeypatch.setattr(guard, "_verify", lambda user, pw: checked.append(user) or True)
    with logins.activating(verdict):
        assert guard.login("opcuser", PASSWORD) is False
    assert checked == []
    with logins.activating(logins.Verdict("10.0.0.9")):  # not blocked, not seen: checked now
        assert guard.login("opcuser", PASSWORD) is True
    assert checked == ["opcuser"]
