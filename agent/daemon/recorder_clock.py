"""The flight recorder's clock: the real one, or a test's virtual one.

The recorder asks its clock for the time a sample is stamped with (``now``), for a steady
tick to keep its grid (``monotonic``) and to wait for the next sample (``wait``). In
service that is the machine's clock.

A test that must see what a week of recording leaves on disk cannot wait a week, so the
daemon (``casefile-agent``, ``casefile-recorder``) takes a *virtual* clock from the
environment, and only when the test flag is set as well::

    CASEFILE_TEST_MODE=1
    CASEFILE_TEST_CLOCK=<start unix seconds>:<end unix seconds>

From ``start`` to ``end`` time passes only when the recorder waits: a wait of 10 s moves
the clock 10 s on and returns at once, so the samples are stamped exactly one interval
apart and a simulated week takes as long as sampling 60,480 times. Past ``end`` the clock
runs at the real pace from there (the daemon goes quiet, and a test can read what it
wrote). Without ``CASEFILE_TEST_MODE=1`` the variable is ignored (with a warning): an
installed agent never runs on a made-up clock because of a stray environment variable.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field

__all__ = ["TEST_CLOCK_ENV", "TEST_MODE_ENV", "RealClock", "RecorderClock", "VirtualClock", "clock_from_env"]

log = logging.getLogger("casefile.agent.daemon")

TEST_MODE_ENV = "CASEFILE_TEST_MODE"
TEST_CLOCK_ENV = "CASEFILE_TEST_CLOCK"


class RealClock:
    """The machine's clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, stop: threading.Event, seconds: float) -> None:
        stop.wait(seconds)


@dataclass
class VirtualClock:
    """Time that moves only when waited on, from ``start`` until ``end``; real time after."""

    start: float
    end: float
    _t: float = field(init=False)
    _real_from: float | None = field(default=None, init=False)  # time.monotonic() of the first wait at ``end``

    def __post_init__(self) -> None:
        self._t = self.start

    def now(self) -> float:
        if self._real_from is None:
            return self._t
        return self.end + (time.monotonic() - self._real_from)

    def monotonic(self) -> float:
        return self.now()

    def wait(self, stop: threading.Event, seconds: float) -> None:
        if self._t >= self.end:
            # The sample after the wait that reached ``end`` was stamped ``end`` exactly;
            # from this wait on, time passes at the real pace.
            if self._real_from is None:
                self._real_from = time.monotonic()
            stop.wait(seconds)
            return
        self._t = min(self.end, self._t + max(0.0, seconds))


RecorderClock = RealClock | VirtualClock


def clock_from_env(env: dict[str, str] | None = None) -> RecorderClock:
    """The virtual clock a test asked for, else the real one (see the module's docstring)."""
    env = dict(os.environ) if env is None else env
    spec = env.get(TEST_CLOCK_ENV, "")
    if not spec:
        return RealClock()
    if env.get(TEST_MODE_ENV) != "1":
        log.warning("%s ignored: it is read only with %s=1 (tests)", TEST_CLOCK_ENV, TEST_MODE_ENV)
        return RealClock()
    try:
        start_text, end_text = spec.split(":")
        start, end = float(start_text), float(end_text)
    except ValueError:
        raise ValueError(f"{TEST_CLOCK_ENV}={spec!r}: expected <start unix seconds>:<end unix seconds>") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 < start <= end):
        raise ValueError(f"{TEST_CLOCK_ENV}={spec!r}: start must be positive and not after end")
    log.warning("flight recorder on a virtual test clock from %.0f to %.0f", start, end)
    return VirtualClock(start, end)
