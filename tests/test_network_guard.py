"""The offline guard: connections fail, except to this machine's loopback (the server tests' server)."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import NetworkBlocked


def test_only_loopback_connections_are_allowed():
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    with socket.socket() as s, pytest.raises(NetworkBlocked):
        s.connect(("10.0.0.1", 80))
    with pytest.raises(ConnectionRefusedError):  # loopback goes through: nothing listens on port 1
        socket.create_connection(("127.0.0.1", 1), timeout=1)
