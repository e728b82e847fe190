"""Bundle writer: round trips, the on-disk format, standard tools, failure behaviour."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from agent.bundle import (
    BundleMeta,
    BundleWriter,
    VerifiedBundle,
    WrittenBundle,
    bundle_file_name,
    new_bundle_id,
    verify_bundle,
)
from agent.errors import BundleError
from agent.keys import SigningKey

CREATED = datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)
BIG = 2 * 1024 * 1024 + 12345


def make_meta(**overrides: object) -> BundleMeta:
    fields: dict[str, object] = {
        "bundle_id": new_bundle_id(),
        "hostname": "web1",
        "case_id": "SR-1234",
        "kind": "one-shot",
        "agent_id": "agent-7",
        "agent_version": "0.1.0",
        "created_at": CREATED,
        "request_id": None,
    }
    fields.update(overrides)
    return BundleMeta(**fields)  # type: ignore[arg-type]


def big_chunks() -> list[bytes]:
    # Incompressible, so the member really is > 2 MiB inside the archive too.
    seed = hashlib.sha256(b"casefile").digest()
    out, left, counter = [], BIG, 0
    while left:
        block = b"".join(
            hashlib.sha256(seed + (counter * 1000 + i).to_bytes(8, "big")).digest()
            for i in range(2048)
        )[:left]
        out.append(block)
        left -= len(block)
        counter += 1
    return out


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def syslog(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "syslog"
    src.parent.mkdir()
    src.write_bytes(b"".join(f"line {i}: kernel: hello\n".encode() for i in range(5000)))
    return src


@pytest.fixture
def written(tmp_path: Path, key: SigningKey, syslog: Path) -> WrittenBundle:
    out = tmp_path / "out"
    out.mkdir()
    with BundleWriter(out, key=key, meta=make_meta()) as w:
        w.add_bytes("facts.pb", b"\x08\x01facts")
        w.add_file("logs/syslog.txt", syslog)
        with w.open_member("logs/big.bin") as fh:
            for chunk in big_chunks():
                fh.write(chunk)
        w.add_bytes("commands/ip addr.txt", "1: lo: <LOOPBACK> — ünïcode\n".encode())
        w.add_bytes("empty.txt", b"")
        return w.finish(
            spec={"scope": "default", "logs": {"since_hours": 24}},
            collectors=[
                {"name": "cpu", "status": "ok", "duration_ms": 3, "error": None, "bytes": 9}
            ],
            truncated=[{"member": "logs/syslog.txt", "reason": "size-limit"}],
            redaction={"profile": "default", "hits": {"email": 2}},
            extra={"note": "test"},
        )


def tar_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def test_round_trip_with_and_without_expected_key(written: WrittenBundle, key: SigningKey) -> None:
    plain = verify_bundle(written.path)
    pinned = verify_bundle(written.path, expected_key=key.public, keep=("facts.pb", "empty.txt"))
    by_fp = verify_bundle(written.path, expected_fingerprint=key.fingerprint.upper()[7:])
    assert not plain.key_pinned and pinned.key_pinned and by_fp.key_pinned
    for vb in (plain, pinned, by_fp):
        assert isinstance(vb, VerifiedBundle)
        assert vb.manifest == written.manifest
        assert vb.manifest_bytes == written.manifest_bytes
        assert vb.public_key == key.public
        assert vb.top == written.path.name.removesuffix(".tar.zst")
        assert [m.path for m in vb.members] == [
            "facts.pb",
            "logs/syslog.txt",
            "logs/big.bin",
            "commands/ip addr.txt",
            "empty.txt",
        ]
    assert pinned.kept == {"facts.pb": b"\x08\x01facts", "empty.txt": b""}
    assert plain.kept == {}
    big = next(m for m in plain.members if m.path == "logs/big.bin")
    assert big.size == BIG
    assert big.sha256 == hashlib.sha256(b"".join(big_chunks())).hexdigest()
    with open(written.path, "rb") as fh:  # a binary file object works as well as a path
        assert verify_bundle(fh).bundle_id == written.bundle_id


def test_written_bundle_describes_the_file(written: WrittenBundle, key: SigningKey) -> None:
    data = written.path.read_bytes()
    assert written.size == len(data)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert written.fingerprint == key.fingerprint
    assert written.manifest_bytes == tar_members(written.path)[-2][1]
    assert stat.S_IMODE(written.path.stat().st_mode) == 0o600
    assert os.listdir(written.path.parent) == [written.path.name]


def test_manifest_fields(written: WrittenBundle, key: SigningKey, syslog: Path) -> None:
    m = json.loads(written.manifest_bytes)
    assert written.manifest_bytes.endswith(b"\n")
    assert m["format"] == "casefile-bundle/2"
    assert m["bundle_id"] == written.bundle_id and len(m["bundle_id"]) == 32
    assert m["agent_id"] == "agent-7"
    assert m["key"] == {
        "algorithm": "ed25519",
        "public_key": key.public.b64,
        "fingerprint": key.fingerprint,
    }
    assert (m["case_id"], m["kind"], m["request_id"]) == ("SR-1234", "one-shot", None)
    assert m["hostname"] == "web1"
    assert m["created_at"] == "2026-03-14T15:09:26.535Z"
    assert m["agent_version"] == "0.1.0"
    assert m["spec"] == {"scope": "default", "logs": {"since_hours": 24}}
    assert m["collectors"][0]["name"] == "cpu"
    assert m["truncated"] == [{"member": "logs/syslog.txt", "reason": "size-limit"}]
    assert m["redaction"] == {"profile": "default", "hits": {"email": 2}}
    assert m["note"] == "test"
    syslog_entry = m["members"][1]
    assert syslog_entry == {
        "path": "logs/syslog.txt",
        "size": syslog.stat().st_size,
        "sha256": hashlib.sha256(syslog.read_bytes()).hexdigest(),
    }
    assert list(m) == sorted(m)


def test_archive_layout_and_headers(written: WrittenBundle) -> None:
    top = written.path.name.removesuffix(".tar.zst")
    members = tar_members(written.path)
    names = [info.name for info, _ in members]
    assert names[-2:] == [f"{top}/MANIFEST.json", f"{top}/MANIFEST.sig"]
    assert all(name.startswith(top + "/") for name in names)
    for info, data in members:
        assert info.isreg() and info.size == len(data)
        assert (info.mode, info.uid, info.gid, info.uname, info.gname) == (0o644, 0, 0, "", "")
        assert info.mtime == int(CREATED.timestamp())
    assert len(members[-1][1]) == 64
    params = zstandard.get_frame_parameters(written.path.read_bytes())
    assert params.has_checksum


def test_file_name() -> None:
    meta = make_meta(hostname="wéb 1/../x" + "h" * 100, case_id="SR 12/34")
    name = bundle_file_name(meta)
    host, rest = name.removeprefix("casefile-").split("-SR_12_34-")
    assert set(host) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-") and len(host) == 64
    assert rest == f"20260314T150926Z-{meta.bundle_id[:8]}.tar.zst"
    adhoc = bundle_file_name(make_meta(case_id=None))
    assert adhoc.startswith("casefile-web1-adhoc-20260314T150926Z-")


@pytest.fixture(scope="module")
def tar_has_zstd() -> None:
    if shutil.which("tar") is None:
        pytest.skip("tar not installed")
    probe = subprocess.run(["tar", "--zstd", "--version"], capture_output=True, check=False)
    if probe.returncode != 0 or shutil.which("zstd") is None:
        pytest.skip("tar has no zstd support")


@pytest.mark.usefixtures("tar_has_zstd")
def test_tar_lists_the_bundle(written: WrittenBundle) -> None:
    listing = subprocess.run(
        ["tar", "--zstd", "-tf", str(written.path)], capture_output=True, check=True, text=True
    ).stdout.splitlines()
    top = written.path.name.removesuffix(".tar.zst")
    assert listing[-2:] == [f"{top}/MANIFEST.json", f"{top}/MANIFEST.sig"]
    assert len(listing) == 7


@pytest.mark.usefixtures("tar_has_zstd")
def test_standard_tools_verify(written: WrittenBundle, key: SigningKey, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(written.path), "-C", str(dest)], check=True)
    top = dest / written.path.name.removesuffix(".tar.zst")
    (tmp_path / "pub.pem").write_bytes(key.public.pem())
    subprocess.run(
        [
            "openssl", "pkeyutl", "-verify", "-rawin", "-pubin",
            "-inkey", str(tmp_path / "pub.pem"),
            "-in", str(top / "MANIFEST.json"), "-sigfile", str(top / "MANIFEST.sig"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    manifest = json.loads((top / "MANIFEST.json").read_bytes())
    sums = "".join(f"{m['sha256']}  {m['path']}\n" for m in manifest["members"])
    (tmp_path / "SHA256SUMS").write_text(sums)
    subprocess.run(
        ["sha256sum", "--strict", "-c", str(tmp_path / "SHA256SUMS")],
        cwd=top,
        check=True,
        capture_output=True,
    )
    # And the check fails when it should: a changed file no longer matches.
    (top / "facts.pb").write_bytes(b"changed")
    bad = subprocess.run(
        ["sha256sum", "-c", str(tmp_path / "SHA256SUMS")], cwd=top, check=False, capture_output=True
    )
    assert bad.returncode != 0


def test_exception_inside_with_leaves_nothing(tmp_path: Path, key: SigningKey) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        w.add_bytes("facts.pb", b"x" * 100_000)
        raise Boom
    assert os.listdir(tmp_path) == []


def test_exit_without_finish_leaves_nothing(tmp_path: Path, key: SigningKey) -> None:
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        w.add_bytes("facts.pb", b"data")
        assert os.listdir(tmp_path) == [f".{w.name}.partial"]
        assert stat.S_IMODE((tmp_path / f".{w.name}.partial").stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == []
    with pytest.raises(BundleError, match="aborted"):
        w.add_bytes("more", b"")


def test_failed_member_is_dropped_and_writer_stays_usable(tmp_path: Path, key: SigningKey) -> None:
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        with pytest.raises(RuntimeError), w.open_member("logs/half.txt") as fh:
            fh.write(b"x" * 3_000_000)
            raise RuntimeError("collector died")
        with pytest.raises(BundleError, match="cannot read"):
            w.add_file("logs/missing.txt", tmp_path / "no-such-file")
        with w.open_member("logs/half.txt") as fh:  # the name is free again
            fh.write(b"second try")
        done = w.finish()
    vb = verify_bundle(done.path, keep=("logs/half.txt",))
    assert [m.path for m in vb.members] == ["logs/half.txt"]
    assert vb.kept["logs/half.txt"] == b"second try"


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../evil",
        "logs/../../evil",
        "a//b",
        "./a",
        "a\\b",
        "a\x00b",
        "a\nb",
        "MANIFEST.json",
        "manifest.SIG",
        "x" * 300,
    ],
)
def test_bad_member_paths_are_refused(tmp_path: Path, key: SigningKey, path: str) -> None:
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        with pytest.raises(BundleError, match="member"):
            w.add_bytes(path, b"x")
        w.add_bytes("ok.txt", b"x")  # still usable
        assert verify_bundle(w.finish().path).members[0].path == "ok.txt"


@pytest.mark.parametrize("second", ["logs/a.txt", "LOGS/A.TXT", "logs/a.txt/b", "logs"])
def test_clashing_member_paths_are_refused(tmp_path: Path, key: SigningKey, second: str) -> None:
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        w.add_bytes("logs/a.txt", b"1")
        with pytest.raises(BundleError):
            w.add_bytes(second, b"2")


def test_one_member_open_at_a_time(tmp_path: Path, key: SigningKey) -> None:
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w, w.open_member("a") as fh:
        fh.write(b"1")
        with pytest.raises(BundleError, match="still open"):
            w.add_bytes("b", b"2")


def test_no_use_after_finish(tmp_path: Path, key: SigningKey) -> None:
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        w.finish()
        with pytest.raises(BundleError, match="already finished"):
            w.add_bytes("late", b"")
        with pytest.raises(BundleError, match="already finished"):
            w.finish()
    assert len(os.listdir(tmp_path)) == 1


def test_extra_keys_cannot_override_manifest_fields(tmp_path: Path, key: SigningKey) -> None:
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        with pytest.raises(BundleError, match="members"):
            w.finish(extra={"members": []})
        with pytest.raises(BundleError, match="plain JSON"):
            w.finish(spec={"when": datetime.now(UTC)})
        assert verify_bundle(w.finish(extra={"x": 1}).path).manifest.extra["x"] == 1


def test_two_writers_in_one_dir(tmp_path: Path, key: SigningKey) -> None:
    first = BundleWriter(tmp_path, key=key, meta=make_meta())
    second = BundleWriter(tmp_path, key=key, meta=make_meta())
    with first, second:
        first.add_bytes("facts.pb", b"one")
        second.add_bytes("facts.pb", b"two")
        a, b = first.finish(), second.finish()
    assert a.path != b.path
    assert sorted(os.listdir(tmp_path)) == sorted([a.path.name, b.path.name])
    assert verify_bundle(a.path, keep=("facts.pb",)).kept["facts.pb"] == b"one"
    assert verify_bundle(b.path, keep=("facts.pb",)).kept["facts.pb"] == b"two"


def test_same_bundle_id_never_overwrites(tmp_path: Path, key: SigningKey) -> None:
    meta = make_meta()
    with BundleWriter(tmp_path, key=key, meta=meta) as w:
        with pytest.raises(BundleError, match="cannot create"):
            BundleWriter(tmp_path, key=key, meta=meta)  # its partial is taken
        w.add_bytes("facts.pb", b"first")
        first = w.finish()
    with (
        pytest.raises(BundleError, match="already exists"),
        BundleWriter(tmp_path, key=key, meta=meta) as w,
    ):
        w.add_bytes("facts.pb", b"second")
        w.finish()
    assert os.listdir(tmp_path) == [first.path.name]
    assert verify_bundle(first.path, keep=("facts.pb",)).kept["facts.pb"] == b"first"


def test_missing_output_dir(tmp_path: Path, key: SigningKey) -> None:
    with pytest.raises(BundleError, match="cannot create bundle"):
        BundleWriter(tmp_path / "nope", key=key, meta=make_meta())


@pytest.mark.parametrize(
    "source", ["/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled"]
)
def test_add_file_takes_what_a_read_returns(tmp_path: Path, key: SigningKey, source: str) -> None:
    # /proc reports size 0 and /sys 4096, whatever a read returns.
    if not Path(source).exists():
        pytest.skip(f"no {source}")
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        info = w.add_file("sys/file", source)
        done = w.finish()
    kept = verify_bundle(done.path, keep=("sys/file",)).kept["sys/file"]
    assert info.size == len(kept) > 0
    assert b"\0" not in kept


def test_add_file_streams_large_files(tmp_path: Path, key: SigningKey) -> None:
    source = tmp_path / "big.log"
    source.write_bytes(b"".join(big_chunks()))
    out = tmp_path / "out"
    out.mkdir()
    with BundleWriter(out, key=key, meta=make_meta()) as w:
        info = w.add_file("logs/big.log", source)
        done = w.finish()
    assert info == (
        "logs/big.log",
        source.stat().st_size,
        hashlib.sha256(source.read_bytes()).hexdigest(),
    )
    assert done.manifest.truncated == ()
    assert verify_bundle(done.path).members == (info,)


def test_add_file_refuses_devices(tmp_path: Path, key: SigningKey) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
        with pytest.raises(BundleError, match="not a regular file"):
            w.add_file("dev/zero", "/dev/zero")
        w.add_bytes("ok", b"")  # still usable
        w.finish()


def test_longest_allowed_paths_round_trip(tmp_path: Path, key: SigningKey) -> None:
    long_path = "/".join(["d" * 200] * 6)[:1020] + ".txt"
    assert len(long_path) == 1024
    meta = make_meta(hostname="h" * 200, case_id="c" * 200)
    with BundleWriter(tmp_path, key=key, meta=meta) as w:
        w.add_bytes(long_path, b"deep")
        w.add_bytes("ünïcödé/名前.txt", b"utf-8 names")
        done = w.finish()
    vb = verify_bundle(done.path, keep=(long_path,))
    assert vb.kept[long_path] == b"deep"
    assert [m.path for m in vb.members] == [long_path, "ünïcödé/名前.txt"]


@pytest.mark.parametrize(
    "bad",
    [{"bundle_id": "XYZ"}, {"kind": "weekly"}, {"created_at": datetime(2026, 1, 1)}],
)
def test_bad_meta(bad: dict[str, object]) -> None:
    with pytest.raises(BundleError):
        make_meta(**bad)


def test_memory_stays_bounded(tmp_path: Path, key: SigningKey) -> None:
    tracemalloc.start()
    try:
        with BundleWriter(tmp_path, key=key, meta=make_meta()) as w:
            with w.open_member("logs/huge.bin") as fh:
                for _ in range(512):  # 32 MiB, incompressible
                    fh.write(os.urandom(64 * 1024))
            done = w.finish()
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        verify_bundle(done.path)
        _, verify_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done.size > 32 * 1024 * 1024
    assert write_peak < 8 * 1024 * 1024, write_peak
    assert verify_peak < 8 * 1024 * 1024, verify_peak


@pytest.mark.parametrize("field", ["hostname", "case_id", "agent_id", "agent_version", "request_id"])
def test_names_with_control_characters_are_refused_before_writing(field: str) -> None:
    """PostgreSQL text refuses NUL, and a name is shown one per line: caught when the bundle
    is made, as the collector would refuse it on arrival."""
    base = {"bundle_id": "a" * 32, "hostname": "web1", "created_at": datetime.now(UTC)}
    with pytest.raises(BundleError, match=rf"bundle {field} .*control character U\+0000"):
        BundleMeta(**{**base, field: "x\x00y"})  # type: ignore[arg-type]
