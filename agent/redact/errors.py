"""Errors of the privacy phase (children of the agent's ``CasefileError``).

    CasefileError
    └── RedactionError     a privacy setting or key/mapping file is unusable
        └── LeakError      the leak gate found a secret or host value after redaction
"""

from __future__ import annotations

from agent.errors import CasefileError

__all__ = ["LeakError", "RedactionError"]


class RedactionError(CasefileError):
    """The privacy phase cannot run as asked (bad profile, unreadable key, refused option)."""


class LeakError(RedactionError):
    """The leak gate found something after redaction; nothing was sealed.

    ``leaks`` holds ``(artifact, rule, count)`` — never the values.
    """

    def __init__(self, message: str, *, leaks: tuple[tuple[str, str, int], ...]) -> None:
        super().__init__(message)
        self.leaks = leaks
