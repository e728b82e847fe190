"""Redaction profiles: what leaves the machine, recorded in every manifest."""

from __future__ import annotations

from dataclasses import dataclass

from agent.redact.errors import RedactionError

__all__ = ["PROFILES", "Profile", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """``pseudonymise``: identifiers become tokens. ``raw``: log/command members are kept."""

    name: str
    pseudonymise: bool
    raw: bool
    description: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("standard", False, True, "secrets scrubbed; everything else as collected"),
        Profile("private", True, True, "secrets scrubbed; host names, addresses, MACs, users, e-mails pseudonymised"),
        Profile(
            "facts-only",
            True,
            False,
            "typed facts and counts only: no raw log or command output; identifiers pseudonymised",
        ),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise RedactionError(f"unknown redaction profile {name!r}; known: {', '.join(PROFILES)}") from None
