"""The tests' port picker: a peer a test restarts must get its port back."""

from __future__ import annotations

import socket
from pathlib import Path

import conftest
import pytest
from conftest import HOST, free_port


def test_free_ports_lie_below_the_outgoing_range_and_are_free_for_tcp_and_udp() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50, "a port was handed out twice"
    for port in ports:
        assert port < low, f"{port} is in the kernel's range for outgoing local ports (>= {low})"
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as sock:
                sock.bind((HOST, port))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        held = taken.getsockname()[1]
        # the picker's first draw is the held port (UDP only, as a CoAP peer would hold it)
        free = free_port()
        conftest._handed_out.discard(free)
        draws = iter([held, held, free])
        monkeypatch.setattr(conftest._pick, "choice", lambda span: next(draws))
        assert free_port() == free
