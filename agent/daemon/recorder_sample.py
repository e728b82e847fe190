"""One flight-recorder sample, read straight from ``/proc`` (Linux).

The resident daemon must stay small and cheap, so this reads the kernel's text files
itself rather than importing psutil: one ``read`` per file, a handful of splits. Counters
(CPU ticks, disk sectors, interface bytes, TCP segments, process CPU time) become rates
against the previous sample, which the ``Sampler`` keeps; the first sample has no rates.

A sample is a flat dict of numbers plus two short lists of process names, so it is stored
as one JSON row and read back without a schema per metric.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TOP_N", "Sampler"]

TOP_N = 5
_SECTOR = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own size
_FS_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "vfat", "exfat", "ntfs", "ntfs3"})


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read()


@dataclass
class Sampler:
    """Holds the previous counters; ``sample(now)`` returns one row's metrics."""

    proc: str = "/proc"
    _prev_t: float | None = None
    _prev: dict[str, float] = field(default_factory=dict)
    _prev_pid_ticks: dict[int, int] = field(default_factory=dict)
    _tick_hz: int = field(default_factory=lambda: os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
    _page: int = field(default_factory=lambda: os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096)

    def sample(self, now: float) -> dict[str, Any]:
        counters: dict[str, float] = {}
        out: dict[str, Any] = {}
        self._cpu(counters)
        self._load_mem(out)
        self._disks(counters)
        self._filesystems(out)
        self._net(counters)
        self._tcp(counters)
        dt = None if self._prev_t is None else now - self._prev_t
        if dt is not None and dt > 0:
            self._rates(counters, dt, out)
        self._processes(out, dt)
        self._prev, self._prev_t = counters, now
        return out

    # -- counters ----------------------------------------------------------------

    def _cpu(self, c: dict[str, float]) -> None:
        try:
            first = _read(f"{self.proc}/stat").split("\n", 1)[0].split()
        except OSError:
            return
        # cpu user nice system idle iowait irq softirq steal
        values = [int(v) for v in first[1:9]] + [0] * max(0, 9 - len(first))
        user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
        c["cpu.user"], c["cpu.system"] = user + nice, system + irq + softirq
        c["cpu.iowait"], c["cpu.steal"], c["cpu.idle"] = iowait, steal, idle

    def _disks(self, c: dict[str, float]) -> None:
        try:
            text = _read(f"{self.proc}/diskstats")
        except OSError:
            return
        for line in text.splitlines():
            f = line.split()
            if len(f) < 14 or f[2].startswith(("loop", "ram", "dm-", "sr")) or _is_partition(f[2]):
                continue
            c[f"disk.{f[2]}.read_Bps"] = int(f[5]) * _SECTOR
            c[f"disk.{f[2]}.write_Bps"] = int(f[9]) * _SECTOR
            c[f"disk.{f[2]}.ios"] = int(f[3]) + int(f[7])
            c[f"disk.{f[2]}.io_ms"] = int(f[6]) + int(f[10])

    def _net(self, c: dict[str, float]) -> None:
        try:
            lines = _read(f"{self.proc}/net/dev").splitlines()[2:]
        except OSError:
            return
        for line in lines:
            name, _, rest = line.partition(":")
            name, f = name.strip(), rest.split()
            if name == "lo" or len(f) < 12:
                continue
            c[f"net.{name}.rx_Bps"], c[f"net.{name}.tx_Bps"] = int(f[0]), int(f[8])
            c[f"net.{name}.errors_ps"] = int(f[2]) + int(f[10])
            c[f"net.{name}.drops_ps"] = int(f[3]) + int(f[11])

    def _tcp(self, c: dict[str, float]) -> None:
        try:
            lines = [ln.split() for ln in _read(f"{self.proc}/net/snmp").splitlines() if ln.startswith("Tcp:")]
        except OSError:
            return
        if len(lines) >= 2:
            row = dict(zip(lines[0][1:], lines[1][1:], strict=False))
            c["tcp.out_segs"] = int(row.get("OutSegs", 0))
            c["tcp.retrans_segs"] = int(row.get("RetransSegs", 0))

    def _rates(self, c: dict[str, float], dt: float, out: dict[str, Any]) -> None:
        p = self._prev
        d = {k: v - p[k] for k, v in c.items() if k in p and v >= p[k]}  # a counter reset gives no rate
        cpu_keys = ("cpu.user", "cpu.system", "cpu.iowait", "cpu.steal", "cpu.idle")
        total = sum(d.get(k, 0) for k in cpu_keys)
        if total > 0:
            for k in cpu_keys[:4]:
                out[k + "_pct"] = round(100.0 * d.get(k, 0) / total, 2)
        if "tcp.out_segs" in d:
            out["tcp.out_segs_ps"] = round(d["tcp.out_segs"] / dt, 2)
            out["tcp.retrans_ps"] = round(d.get("tcp.retrans_segs", 0) / dt, 2)
        for k, v in d.items():
            if (k.startswith("disk.") and k.endswith("_Bps")) or k.startswith("net."):
                out[k] = round(v / dt, 1)
            elif k.endswith(".io_ms"):
                ios = d.get(k[: -len("io_ms")] + "ios", 0)
                out[k[: -len("io_ms")] + "latency_ms"] = round(v / ios, 2) if ios else 0.0

    # -- levels ------------------------------------------------------------------

    def _load_mem(self, out: dict[str, Any]) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            out["load.1m"] = float(_read(f"{self.proc}/loadavg").split()[0])
        try:
            info = {}
            for line in _read(f"{self.proc}/meminfo").splitlines():
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024 if rest.split() else 0
        except (OSError, ValueError):
            return
        total, avail = info.get("MemTotal", 0), info.get("MemAvailable", info.get("MemFree", 0))
        out["mem.used_bytes"], out["mem.total_bytes"] = total - avail, total
        out["swap.used_bytes"] = info.get("SwapTotal", 0) - info.get("SwapFree", 0)
        out["swap.total_bytes"] = info.get("SwapTotal", 0)

    def _filesystems(self, out: dict[str, Any]) -> None:
        try:
            mounts = _read(f"{self.proc}/mounts").splitlines()
        except OSError:
            return
        seen: set[str] = set()
        for line in mounts:
            f = line.split()
            if len(f) < 3 or f[2] not in _FS_TYPES or f[0] in seen:
                continue
            seen.add(f[0])
            mount = f[1].replace("\\040", " ")
            try:
                st = os.statvfs(mount)
            except OSError:
                continue
            size = st.f_blocks * st.f_frsize
            if size:
                out[f"fs.{mount}.used_pct"] = round(100.0 * (size - st.f_bavail * st.f_frsize) / size, 2)

    def _processes(self, out: dict[str, Any], dt: float | None) -> None:
        ticks: dict[int, int] = {}
        rows: list[tuple[str, float, int]] = []  # name, cpu %, rss bytes
        try:
            pids = [int(p) for p in os.listdir(self.proc) if p.isdigit()]
        except OSError:
            return
        for pid in pids:
            try:
                stat = _read(f"{self.proc}/{pid}/stat")
            except OSError:
                continue  # gone between listdir and open
            lpar, rpar = stat.find("("), stat.rfind(")")
            f = stat[rpar + 2 :].split()
            if lpar < 0 or len(f) < 22:
                continue
            t = int(f[11]) + int(f[12])  # utime + stime
            ticks[pid] = t
            cpu = 0.0
            if dt:
                # A process not seen at the previous sample was born since: all its time
                # was spent in this interval (a short-lived hog is seen in its first sample).
                cpu = max(0.0, 100.0 * (t - self._prev_pid_ticks.get(pid, 0)) / self._tick_hz / dt)
            rows.append((stat[lpar + 1 : rpar][:32], round(cpu, 1), int(f[21]) * self._page))
        self._prev_pid_ticks = ticks
        if dt:
            by_cpu = sorted(rows, key=lambda r: r[1], reverse=True)[:TOP_N]
            out["top_cpu"] = [[n, c] for n, c, _ in by_cpu]
        out["top_rss"] = [[n, r] for n, _, r in sorted(rows, key=lambda r: r[2], reverse=True)[:TOP_N]]


def _is_partition(name: str) -> bool:
    """sda1, nvme0n1p2, mmcblk0p1: the whole disk is counted, its partitions would double it."""
    if name.startswith(("nvme", "mmcblk")):
        return "p" in name.rsplit("n", 1)[-1] or ("p" in name[6:] and name.startswith("mmcblk"))
    return name[-1:].isdigit() and name[:2] in ("sd", "vd", "hd", "xv")
