"""Core files in the ``coredumps`` collector: only when allowed, within the bound, newest
first, never through a symbolic link, never under ``private`` or ``facts-only``; and the
policy keys that allow them."""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.analysis import BundleView
from agent.bundle.reader import verify_bundle
from agent.collect import CollectionSpec
from agent.collect.builtin.corefiles import CORE_MAX_BYTES_LIMIT
from agent.daemon.policy import LIMITS, Policy, PolicyError, load_policy
from agent.keys import SigningKey
from agent.oneshot import PrivacyOptions, collect_bundle, prepare_collection
from protos import facts_pb2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "crashes"
BOOT = "0123456789abcdef0123456789abcdef"
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd-coredump is Linux")


def _real_core(where: Path) -> bytes:
    """A core the kernel wrote for a real aborted process when core_pattern is a plain
    file name (it is here: "core"); else the bytes of a real binary (the interpreter)."""
    where.mkdir()
    pattern = Path("/proc/sys/kernel/core_pattern")
    if pattern.exists() and not pattern.read_text().strip().startswith("|") and "/" not in pattern.read_text():

        def unlimited() -> None:
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

        subprocess.run(
            [sys.executable, "-c", "import os; os.abort()"], cwd=where, preexec_fn=unlimited, check=False, timeout=30
        )
        cores = [p for p in where.iterdir() if p.name.startswith("core")]
        if cores:
            return cores[0].read_bytes()
    return Path(sys.executable).read_bytes()[: 4 << 20]


def _store(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """systemd-coredump's store as it names its files: newest a real core, then an nginx
    core listed by (the fixture of) coredumpctl, then a small older one; and a symbolic
    link, newest of all, to a file outside the store."""
    store = tmp_path / "coredump"
    store.mkdir()
    interpreter = Path(sys.executable).read_bytes()
    files = {
        f"core.python3.1000.{BOOT}.4242.1733600000000000": _real_core(tmp_path / "gen"),
        f"core.nginx.998.{BOOT}.48121.1733563004123456.zst": interpreter[:300_000],
        f"core.worker.1000.{BOOT}.3301.1733476603000000.xz": interpreter[-1000:],
    }
    now = time.time()
    for age, (name, data) in enumerate(files.items()):
        (store / name).write_bytes(data)
        os.utime(store / name, (now - 3600 * (age + 1),) * 2)
    secret = tmp_path / "secret.txt"
    secret.write_text("not a core file\n")
    link = store / f"core.evil.0.{BOOT}.1.1733700000000000.zst"
    link.symlink_to(secret)
    os.utime(link, (now, now), follow_symlinks=False)
    return store, files


def _path_with_coredumpctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "coredumpctl"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = list ] && cat {FIXTURES}/coredumpctl_list.json; done\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _spec(store: Path, **options: str | int | bool) -> CollectionSpec:
    return CollectionSpec(only=("host", "coredumps"), options={"coredump_dir": str(store), **options})


def _members(path: Path, names: list[str]) -> dict[str, bytes]:
    verified = verify_bundle(path, keep=names)
    return {m.path: verified.kept.get(m.path, b"") for m in verified.members if m.path.startswith("cores/")}


@linux
def test_no_core_file_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _path_with_coredumpctl(tmp_path, monkeypatch)
    store, _ = _store(tmp_path)
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=_spec(store))
    s = BundleView.from_file(done.bundle.path).snapshot
    assert s.coredumps.total == 3 and not s.coredumps.core_files  # metadata only
    assert _members(done.bundle.path, []) == {}


@linux
def test_allowed_core_files_newest_first_within_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _path_with_coredumpctl(tmp_path, monkeypatch)
    store, files = _store(tmp_path)
    newest, nginx, oldest = files
    bound = len(files[newest]) + len(files[oldest]) + 10  # the nginx core does not fit after the newest
    spec = _spec(store, coredump_files=True, coredump_max_bytes=bound)
    with prepare_collection(key=None, spec=spec, preview=True) as prepared:
        listed = {m["path"]: (m["kind"], m["size"]) for m in prepared.preview.to_dict()["members"]}
    # The customer sees each core file and its size before anything is sealed.
    assert listed[f"cores/{newest}"] == ("core", len(files[newest]))
    assert listed[f"cores/{oldest}"] == ("core", len(files[oldest]))
    assert not any(nginx in p or "evil" in p for p in listed)
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=spec)
    s = BundleView.from_file(done.bundle.path).snapshot
    notes = [(c.name, c.included, c.reason, c.size, c.pid) for c in s.coredumps.core_files]
    assert [n[0] for n in notes] == [f"core.evil.0.{BOOT}.1.1733700000000000.zst", newest, nginx, oldest]
    assert notes[0][1:3] == (False, "a symbolic link, not followed")
    assert notes[1][1:4] == (True, "", len(files[newest]))
    assert notes[2][1] is False and notes[2][2].startswith(f"over the bound: {len(files[nginx])} bytes, ")
    assert notes[2][4] == 48121  # matched to coredumpctl's entry (same pid and second)
    assert notes[3][1:4] == (True, "", 1000)
    got = _members(done.bundle.path, [f"cores/{newest}", f"cores/{oldest}"])
    # Byte for byte, not redacted, and nothing through the link.
    assert got == {f"cores/{newest}": files[newest], f"cores/{oldest}": files[oldest]}


@linux
@pytest.mark.parametrize("profile", ["private", "facts-only"])
def test_private_and_facts_only_never_include_core_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    _path_with_coredumpctl(tmp_path, monkeypatch)
    store, files = _store(tmp_path)
    spec = _spec(store, coredump_files=True)
    privacy = PrivacyOptions(profile=profile, home=tmp_path / "home")
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=spec, privacy=privacy)
    assert _members(done.bundle.path, []) == {}
    manifest = json.loads(verify_bundle(done.bundle.path).manifest_bytes)
    assert "never includes core files" in json.dumps(manifest)
    assert len(files) == 3


@linux
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"coredump_files": "yes"}, "coredump_files"),
        ({"coredump_files": True, "coredump_max_bytes": -1}, "coredump_max_bytes"),
        ({"coredump_files": True, "coredump_max_bytes": CORE_MAX_BYTES_LIMIT + 1}, "coredump_max_bytes"),
        ({"coredump_files": True, "coredump_max_bytes": "64M"}, "coredump_max_bytes"),
    ],
)
def test_a_bad_option_fails_the_collector_clearly(
    tmp_path: Path, options: dict[str, str | int | bool], named: str
) -> None:
    store = tmp_path / "coredump"
    store.mkdir()
    done = collect_bundle(key=SigningKey.generate(), output_dir=tmp_path / "out", spec=_spec(store, **options))
    status = {c.name: c for c in BundleView.from_file(done.bundle.path).snapshot.collectors}
    assert status["coredumps"].state == facts_pb2.CollectorStatus.ERROR
    assert named in status["coredumps"].error


def test_policy_core_keys_default_off_and_are_bounded(tmp_path: Path) -> None:
    base = Policy.from_dict({"version": 1}, "t")  # absent: off, 64 MiB
    assert (base.crash_core_files, base.crash_core_max_bytes) == (False, 64 << 20)
    assert base.collector_options() == {"coredump_files": False, "coredump_max_bytes": 64 << 20}
    on = Policy.from_dict({"crash_core_files": True, "crash_core_max_bytes": 0}, "t")
    assert on.collector_options() == {"coredump_files": True, "coredump_max_bytes": 0}  # zero: none fits
    top = LIMITS["crash_core_max_bytes"]
    assert top == CORE_MAX_BYTES_LIMIT  # the policy and the collector share one ceiling
    assert Policy.from_dict({"crash_core_max_bytes": top}, "t").crash_core_max_bytes == top
    for bad in (-1, top + 1, 10**400, 1.5, True, "64M"):
        with pytest.raises(PolicyError, match="crash_core_max_bytes must be an integer"):
            Policy.from_dict({"crash_core_max_bytes": bad}, "t")
    for bad_flag in (1, "true", None):
        with pytest.raises(PolicyError, match="crash_core_files must be true or false"):
            Policy.from_dict({"crash_core_files": bad_flag}, "t")
    # Written into a new policy file, read back the same.
    assert load_policy(tmp_path) == Policy()
    assert json.loads((tmp_path / "policy.json").read_text())["crash_core_files"] is False


@linux
@pytest.mark.parametrize("allowed", [False, True])
def test_the_daemons_policy_reaches_the_collector(tmp_path: Path, allowed: bool) -> None:
    """A live collection reads crash_core_files from the policy file: allowed, the
    collector looks in systemd-coredump's store (absent on this machine: said, not failed)."""
    from agent.daemon.execute import collect_live

    home = tmp_path / "home"
    home.mkdir()
    (home / "policy.json").write_text(json.dumps({"version": 1, "crash_core_files": allowed}))
    bundle = collect_live(
        key=SigningKey.generate(),
        agent_id="a1",
        request_id="r1",
        collectors=("host", "coredumps"),
        since_s=None,
        profile="standard",
        home=home,
        output_dir=tmp_path / "out",
    )
    s = BundleView.from_file(bundle.path).snapshot
    status = {c.name: c for c in s.collectors}["coredumps"]
    assert status.state == facts_pb2.CollectorStatus.OK
    warnings = json.dumps(json.loads(verify_bundle(bundle.path).manifest_bytes))  # the run's warnings are there
    store = Path("/var/lib/systemd/coredump")
    if allowed and not store.exists():
        assert f"core files: {store}: No such file or directory" in warnings
    elif not allowed:
        assert not s.coredumps.core_files and "core files: " not in warnings


@linux
def test_one_run_allows_core_files_and_the_preview_lists_them(tmp_path: Path) -> None:
    """The customer's own choice on their machine: ``casefile collect --set
    coredump_files=true`` — the preview lists each core file with its size, writes nothing."""
    store, files = _store(tmp_path)
    newest = next(iter(files))
    cli = [
        sys.executable, "-m", "agent.cli", "collect", "--home", str(tmp_path / "home"), "--preview", "--json",
        "-o", str(tmp_path / "out"), "--only", "coredumps", "--set", "coredump_files=true",
        "--set", f"coredump_dir={store}", "--set", f"coredump_max_bytes={len(files[newest])}",
    ]  # fmt: skip
    done = subprocess.run(cli, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr
    listed = {m["path"]: m for m in json.loads(done.stdout)["members"]}
    assert [(p, m["kind"], m["size"]) for p, m in listed.items() if p.startswith("cores/")] == [
        (f"cores/{newest}", "core", len(files[newest]))
    ]
    assert not (tmp_path / "out").exists()


@linux
def test_a_command_name_systemd_escaped_becomes_a_member_name(tmp_path: Path) -> None:
    store = tmp_path / "coredump"
    store.mkdir()
    name = f"core.Web\\x20Content.1000.{BOOT}.77.1733600000000000.zst"  # systemd's escape of a space
    data = Path(sys.executable).read_bytes()
    (store / name).write_bytes(data)
    done = collect_bundle(
        key=SigningKey.generate(), output_dir=tmp_path / "out", spec=_spec(store, coredump_files=True)
    )
    s = BundleView.from_file(done.bundle.path).snapshot
    assert [(c.name, c.included) for c in s.coredumps.core_files] == [(name, True)]
    member = f"cores/{name.replace(chr(92), '_')}"
    assert _members(done.bundle.path, [member]) == {member: data}
