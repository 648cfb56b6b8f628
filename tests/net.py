"""Free TCP ports on 127.0.0.1 for the servers tests start."""

from __future__ import annotations

import contextlib
import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free a moment ago. Every socket stays bound until all are
    picked, so the kernel cannot hand the same port out twice (it may, to calls one after
    another: two services on one port is a stack that cannot start)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port() -> int:
    [port] = free_ports(1)
    return port
