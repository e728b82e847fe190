"""The flight recorder's settings, read from the policy (``Policy.recorder_settings``).

Apart from the recorder itself so that the policy can build them without importing the
recorder, which reads the policy when run on its own (no import circle)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RecorderSettings"]


@dataclass(frozen=True)
class RecorderSettings:
    interval_s: float = 10.0
    fine_s: int = 6 * 3600
    retention_s: int = 7 * 86400
    max_bytes: int = 32 * 1024 * 1024
