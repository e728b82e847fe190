"""A refused AMQP 0-9-1 login against the real RabbitMQ on this machine, without a client
library: the protocol header, the broker's Connection.Start, our Connection.StartOk with
PLAIN credentials it does not know. The broker logs "PLAIN login refused" and closes."""

from __future__ import annotations

import socket
import struct
import uuid

HOST, PORT = "127.0.0.1", 5672


def _frame(payload: bytes) -> bytes:
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"  # a method frame on channel 0


def _short(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">B", len(data)) + data


def broker_listening() -> bool:
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError:
        return False
    return True


def refused_login() -> str:
    """Try a login with a user that does not exist; returns the user name the log will show."""
    user = f"casefile_nosuch_{uuid.uuid4().hex[:8]}"
    with socket.create_connection((HOST, PORT), timeout=10) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        sock.recv(65536)  # Connection.Start
        response = f"\0{user}\0wrong".encode()
        start_ok = (
            struct.pack(">HHI", 10, 11, 0)  # Connection.StartOk, empty client properties
            + _short("PLAIN")
            + struct.pack(">I", len(response))
            + response
            + _short("en_US")
        )
        sock.sendall(_frame(start_ok))
        try:
            while sock.recv(65536):  # the broker closes the connection
                pass
        except OSError:
            pass
    return user
