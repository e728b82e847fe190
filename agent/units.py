"""Durations and sizes as people type them: ``30m``, ``24h``, ``7d``; ``512K``, ``64M``, ``1G``."""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["parse_duration", "parse_size"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
_BYTES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_duration(text: str) -> dt.timedelta:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"duration must look like 90s, 30m, 24h or 7d, got {text!r}")
    try:
        return dt.timedelta(seconds=float(m.group(1)) * _SECONDS[m.group(2)])
    except OverflowError:  # more days than a timedelta holds (999999999)
        raise ValueError(f"duration {text[:40]!r} is too long") from None


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"size must look like 512K, 64M or 1G, got {text!r}")
    return int(float(m.group(1)) * _BYTES[m.group(2).upper()])
