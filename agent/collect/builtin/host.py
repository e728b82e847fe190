"""Host and operating system: names, OS release, kernel, boot time, time zone, virtualization."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path

import psutil

from agent.collect.framework import CollectContext, Collector, Pending
from agent.collect.options import FloatOption
from protos import facts_pb2

# (DMI file, lowercased substring, systemd-detect-virt name), first match wins. The product
# is checked before the vendor because KVM guests report "QEMU" as their vendor.
_DMI_VIRT: tuple[tuple[str, str, str], ...] = (
    ("product_name", "kvm", "kvm"),
    ("product_name", "virtualbox", "oracle"),
    ("product_name", "vmware", "vmware"),
    ("product_name", "google compute engine", "google"),
    ("product_name", "parallels", "parallels"),
    ("sys_vendor", "qemu", "qemu"),
    ("sys_vendor", "vmware", "vmware"),
    ("sys_vendor", "innotek", "oracle"),
    ("sys_vendor", "xen", "xen"),
    ("sys_vendor", "bochs", "bochs"),
    ("sys_vendor", "amazon ec2", "amazon"),
    ("sys_vendor", "apple virtualization", "apple"),
)
_CGROUP_CONTAINERS: tuple[tuple[str, str], ...] = (
    ("docker", "docker"),
    ("libpod", "podman"),
    ("lxc", "lxc"),
    ("kubepods", "container-other"),
    ("containerd", "container-other"),
)


FQDN_TIMEOUT = FloatOption("fqdn_timeout_s", 1.0, "how long the host's full DNS name may take, seconds", maximum=60.0)


class HostCollector(Collector):
    name = "host"
    description = "Host name, OS release, kernel, boot time, time zone and virtualization"
    budget_s = 3.0
    facts_field = "host"
    facts_type = facts_pb2.HostFacts

    options = (FQDN_TIMEOUT,)

    def collect(self, ctx: CollectContext) -> facts_pb2.HostFacts:
        facts = facts_pb2.HostFacts(
            hostname=socket.gethostname(),
            os=platform.system(),
            kernel=platform.release(),
            arch=platform.machine(),
            python_version=platform.python_version(),
            timezone=_timezone(),
        )
        facts.os_release, facts.os_version = _os_release()
        boot = float(psutil.boot_time())
        facts.boot_time.FromNanoseconds(int(boot * 1e9))
        facts.uptime_seconds = max(0.0, time.time() - boot)
        if sys.platform.startswith("linux"):
            facts.virtualization = _linux_virtualization()
            facts.virtualized = bool(facts.virtualization)
        # getfqdn asks the resolver and has no timeout of its own: a dead DNS server
        # would stall the whole collection for tens of seconds.
        limit = min(ctx.get(FQDN_TIMEOUT), ctx.remaining())
        try:
            facts.fqdn = Pending(socket.getfqdn, name="casefile-getfqdn").result(limit)
        except TimeoutError:
            ctx.warn(f"fqdn lookup did not answer within {limit:.2f} s; fqdn left empty")
        return facts


def _os_release() -> tuple[str, str]:
    """(human release name, version) per platform."""
    system = platform.system()
    if system == "Linux":
        try:
            info = platform.freedesktop_os_release()
        except OSError:
            return f"Linux {platform.release()}", platform.version()
        pretty = info.get("PRETTY_NAME") or info.get("NAME", "Linux")
        return pretty, info.get("VERSION_ID") or platform.version()
    if system == "Darwin":
        release = platform.mac_ver()[0]
        return f"macOS {release}".strip(), release
    if system == "Windows":
        edition = platform.win32_edition() or ""
        return f"Windows {platform.release()} {edition}".strip(), platform.version()
    return platform.platform(), platform.version()


def _timezone() -> str:
    """IANA zone name when known (else the abbreviation) and the current UTC offset."""
    now = time.localtime()
    offset = now.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return f"{_zone_name(now)} (UTC{sign}{hours:02d}:{minutes:02d})"


def _zone_name(now: time.struct_time) -> str:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and not tz.startswith("/"):
        return tz
    localtime = os.path.realpath(tz or "/etc/localtime")
    if "/zoneinfo/" in localtime:
        return localtime.split("/zoneinfo/", 1)[1]
    return now.tm_zone or time.tzname[now.tm_isdst > 0]


def _read(path: str, limit: int = 65536) -> str:
    """A small system file's text, or "" when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


def _linux_virtualization() -> str:
    """systemd-detect-virt's answer, best effort and without a subprocess; "" for none."""
    container = _read("/run/systemd/container").strip()
    if container:
        return container
    if Path("/run/.containerenv").exists():
        return "podman"
    if Path("/.dockerenv").exists():
        return "docker"
    environ = _read("/proc/1/environ")  # root only; others get "" and move on
    for entry in environ.split("\0"):
        if entry.startswith("container=") and entry[10:]:
            return entry[10:]
    cgroup = _read("/proc/1/cgroup").lower()
    for needle, name in _CGROUP_CONTAINERS:
        if needle in cgroup:
            return name
    if "microsoft" in _read("/proc/sys/kernel/osrelease").lower():
        return "wsl"
    hypervisor = _read("/sys/hypervisor/type").strip()
    if hypervisor:
        return hypervisor
    dmi = {
        f: _read(f"/sys/class/dmi/id/{f}").strip().lower() for f in ("product_name", "sys_vendor")
    }
    # Hyper-V only: a physical Surface also says "Microsoft Corporation".
    if dmi["sys_vendor"] == "microsoft corporation" and "virtual machine" in dmi["product_name"]:
        return "microsoft"
    for dmi_file, needle, name in _DMI_VIRT:
        if needle in dmi[dmi_file]:
            return name
    return "vm-other" if _cpu_has_hypervisor_flag() else ""


def _cpu_has_hypervisor_flag() -> bool:
    # Only the first "flags" line is needed; /proc/cpuinfo is long on big machines.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "hypervisor" in line.split()
    except OSError:
        pass
    return False
