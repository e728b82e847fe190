"""Where the agent keeps its identity: key, agent id and the pinned collector.

Home: ``--home`` / ``$CASEFILE_HOME``; else ``/var/lib/casefile`` for root on POSIX;
else ``$XDG_DATA_HOME/casefile`` (``~/.local/share/casefile``). The folder is 0700,
the key 0600.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import KeyStoreError

if TYPE_CHECKING:
    from agent.keys import SigningKey

__all__ = ["AgentHome", "Enrollment", "default_home"]


def default_home() -> Path:
    env = os.environ.get("CASEFILE_HOME")
    if env:
        return Path(env)
    if os.name == "posix" and os.geteuid() == 0:
        return Path("/var/lib/casefile")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "casefile"


@dataclass(frozen=True)
class Enrollment:
    agent_id: str
    collector: str
    ca_fingerprint: str | None
    key_fingerprint: str

    @property
    def collector_host(self) -> str:
        """The host part of ``collector``; "" if it has none."""
        return host_of(self.collector)


def host_of(address: str) -> str:
    """The host part of "HOST:PORT" or "[V6]:PORT"; "" if it has none."""
    host, sep, _ = address.strip().rpartition(":")
    return host.strip("[]") if sep else ""


class AgentHome:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_home()

    @property
    def key_path(self) -> Path:
        return self.root / "agent.key"

    @property
    def enrollment_path(self) -> Path:
        return self.root / "enrollment.json"

    def key(self) -> SigningKey:
        # Imported here: cryptography is ~15 ms that every CLI command would pay at start.
        from agent.keys import load_or_create_key

        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return load_or_create_key(self.key_path)

    def existing_key(self) -> SigningKey | None:
        """The key, if this home has one; never makes one (nor the folder)."""
        from agent.keys import SigningKey

        return SigningKey.load(self.key_path) if self.key_path.exists() else None

    def enrollment(self) -> Enrollment | None:
        try:
            data = json.loads(self.enrollment_path.read_text("utf-8"))
            return Enrollment(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(
                f"enrollment file {self.enrollment_path} is damaged: {exc}",
                path=str(self.enrollment_path),
            ) from None

    def save_enrollment(self, enrollment: Enrollment) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.enrollment_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(enrollment), fh, indent=1)
            fh.write("\n")
        os.replace(tmp, self.enrollment_path)
