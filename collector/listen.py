"""Why the collector could not listen where it was told to, in words.

grpc only says that binding failed (a 0 port or a RuntimeError). Binding a plain socket
to the same address, without SO_REUSEPORT just as the collector now binds, gets the
operating system's reason: most often "address already in use" because another
collector (or another program) is listening there.
"""

from __future__ import annotations

import errno
import resource
import socket

__all__ = ["ListenError", "raise_open_files_limit", "why_not_listening"]


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit; (before, after).

    Each connected agent holds a descriptor, and a reconnect storm briefly more; the
    usual soft limit (1,024) would refuse connections long before the memory runs out.
    The hard limit is the operator's (systemd ``LimitNOFILE``).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, want
    return soft, soft


class ListenError(OSError):
    """The collector cannot listen on its address; says which and why."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason


def why_not_listening(host: str, port: int, option: str = "--address") -> str:
    """The reason a listening socket on ``host:port`` cannot be made, as a phrase."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"port {port} is already in use (another collector or program listens there); "
                        f"stop it or choose another {option}"
                    )
                if exc.errno == errno.EACCES:
                    return f"permission denied for port {port} (ports below 1024 need privileges)"
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"{host} is not an address of this machine"
                return exc.strerror or str(exc)
    return "grpc could not bind it (the operating system allows a plain socket there; see the log above)"
