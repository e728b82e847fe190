"""Why the collector could not listen where it was told to, in words; and how many
connections it may hold (:func:`raise_open_files_limit`).

grpc only says that binding failed (a 0 port or a RuntimeError). Binding a plain socket
to the same address, without SO_REUSEPORT just as the collector now binds, gets the
operating system's reason: most often "address already in use" because another
collector (or another program) is listening there.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket

__all__ = ["ListenError", "raise_open_files_limit", "why_not_listening"]

log = logging.getLogger("casefile.collector")

# Each connected agent holds a socket; below this many descriptors a collector says so.
_FEW_FILES = 4096


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


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns (soft, hard).

    Every agent connection is a descriptor, and distributions start services with a soft
    limit of 1024 (systemd: 1024 soft, 524288 hard) while the hard limit allows far more:
    a collector left at 1024 stops accepting connections at about a thousand agents. A
    process may raise its own soft limit up to the hard one; beyond that is the
    administrator's (``LimitNOFILE=`` in the unit), which the warning names.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %d to %d: %s", soft, want, exc)
    if soft != resource.RLIM_INFINITY and soft < _FEW_FILES:
        log.warning(
            "open files limit %d (hard %d): the collector holds one per connected agent; "
            "raise it (LimitNOFILE= in its systemd unit) for more than ~%d agents",
            soft,
            hard,
            max(0, soft - 100),
        )
    return soft, hard
