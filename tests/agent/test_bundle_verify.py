"""Bundle verification against tampered, truncated, hostile and random archives."""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.bundle import BundleMeta, BundleWriter, VerifiedBundle, new_bundle_id, verify_bundle
from agent.bundle.reader import ReadMeter, iter_members
from agent.errors import VerificationError
from agent.keys import SigningKey
from tests.bombs import pax_bomb, zero_bomb

Entry = tuple[tarfile.TarInfo, bytes]

SYSLOG = b"".join(b"Mar 14 15:09:%02d web1 sshd[1]: Accepted key\n" % (i % 60) for i in range(400))


# -- building real bundles and tampered copies -------------------------------------


@functools.cache
def original() -> tuple[bytes, SigningKey]:
    """One small valid bundle (cached: hypothesis tests cannot take function fixtures)."""
    key = SigningKey.generate()
    meta = BundleMeta(
        bundle_id=new_bundle_id(),
        hostname="web1",
        case_id="SR-1234",
        kind="one-shot",
        agent_version="0.1.0",
        created_at=datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC),
    )
    with tempfile.TemporaryDirectory() as tmp:
        with BundleWriter(Path(tmp), key=key, meta=meta) as w:
            w.add_bytes("facts.pb", b"\x08\x01facts")
            w.add_bytes("logs/syslog.txt", SYSLOG)
            w.add_bytes("commands/uptime.txt", b" 15:09:26 up 3 days\n")
            done = w.finish(spec={"scope": "default"})
        return done.path.read_bytes(), key


def decompress(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def unpack(data: bytes) -> list[Entry]:
    """The members of a bundle, headers and contents, in archive order."""
    with tarfile.open(fileobj=io.BytesIO(decompress(data)), mode="r:") as tar:
        out = []
        for info in tar.getmembers():
            fh = tar.extractfile(info)
            out.append((info, fh.read() if fh else b""))
        return out


def pack(entries: list[Entry], *, compress: bool = True) -> bytes:
    """A tar stream (zstd-compressed unless told otherwise) of exactly these entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info = copy.copy(info)
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw) if compress else raw


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data)
    return info, data


def top() -> str:
    return unpack(original()[0])[0][0].name.split("/")[0]


def manifest_of(entries: list[Entry]) -> dict[str, Any]:
    by_name = {info.name.split("/", 1)[1]: data for info, data in entries}
    loaded: dict[str, Any] = json.loads(by_name["MANIFEST.json"])
    return loaded


def with_manifest(entries: list[Entry], manifest: dict[str, Any], key: SigningKey | None) -> bytes:
    """Replace MANIFEST.json (and, given a key, re-sign it) and pack the result."""
    body = (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()
    out = []
    for info, data in entries:
        rel = info.name.split("/", 1)[1]
        if rel == "MANIFEST.json":
            data = body
        elif rel == "MANIFEST.sig" and key is not None:
            data = key.sign(body)
        out.append((info, data))
    return pack(out)


def rehash(manifest: dict[str, Any], entries: list[Entry]) -> dict[str, Any]:
    """The manifest with its members list rebuilt from what the archive now holds."""
    manifest = copy.deepcopy(manifest)
    manifest["members"] = [
        {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for info, data in entries
        if (rel := info.name.split("/", 1)[1]) not in ("MANIFEST.json", "MANIFEST.sig")
    ]
    return manifest


def check(data: bytes, reason: str, member: str | None, **kwargs: Any) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        verify_bundle(io.BytesIO(data), **kwargs)
    err = caught.value
    assert (err.reason, err.member) == (reason, member), str(err)
    assert "\n" not in str(err)
    return err


# -- the original is fine -----------------------------------------------------------


def test_original_verifies_and_repacks() -> None:
    data, key = original()
    vb = verify_bundle(io.BytesIO(data), expected_key=key.public)
    assert isinstance(vb, VerifiedBundle) and vb.key_pinned
    # The helper itself changes nothing that matters: a plain repack still verifies.
    assert (
        verify_bundle(io.BytesIO(pack(unpack(data))), expected_key=key.public).members == vb.members
    )


# -- tampering ----------------------------------------------------------------------


def modify(rel: str, change: Callable[[bytes], bytes]) -> list[Entry]:
    out = []
    for info, data in unpack(original()[0]):
        if info.name.split("/", 1)[1] == rel:
            data = change(data)
        out.append((info, data))
    return out


def test_flipped_byte_in_member() -> None:
    flipped = modify("logs/syslog.txt", lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])
    err = check(pack(flipped), "hash-mismatch", "logs/syslog.txt")
    assert str(err).startswith("member logs/syslog.txt: sha256 mismatch (manifest ")


def test_replaced_member() -> None:
    check(pack(modify("facts.pb", lambda d: b"forged facts")), "size-mismatch", "facts.pb")


def test_removed_member() -> None:
    entries = [e for e in unpack(original()[0]) if not e[0].name.endswith("/facts.pb")]
    check(pack(entries), "missing-member", "facts.pb")


def test_added_member() -> None:
    entries = unpack(original()[0])
    entries.insert(1, entry(f"{top()}/logs/extra.txt", b"planted"))
    check(pack(entries), "extra-member", "logs/extra.txt")


def test_member_after_signature() -> None:
    entries = [*unpack(original()[0]), entry(f"{top()}/late.txt", b"late")]
    check(pack(entries), "trailing-member", "late.txt")


def test_member_between_manifest_and_signature() -> None:
    entries = unpack(original()[0])
    entries.insert(-1, entry(f"{top()}/sneaky.txt", b"x"))
    check(pack(entries), "trailing-member", "sneaky.txt")


def test_signature_before_manifest() -> None:
    entries = unpack(original()[0])
    entries[-2], entries[-1] = entries[-1], entries[-2]
    check(pack(entries), "trailing-member", "MANIFEST.json")


@pytest.mark.parametrize("rel", ["MANIFEST.json", "MANIFEST.sig"])
def test_missing_manifest_or_signature(rel: str) -> None:
    entries = [e for e in unpack(original()[0]) if not e[0].name.endswith(rel)]
    check(pack(entries), "missing-manifest", rel)


@pytest.mark.parametrize(
    "name",
    [
        "{top}/../evil",
        "../evil",
        "{top}/logs/../../evil",
        "/etc/evil",
        "{top}//x",
        "{top}/a\\b",
        "{top}/a\nb",
        "other-top/facts2.pb",
        "loose-file",
        "{top}/./x",
    ],
)
def test_unsafe_paths(name: str) -> None:
    entries = unpack(original()[0])
    bad = name.format(top=top())
    entries.insert(1, entry(bad, b"x"))
    err = check(pack(entries), "unsafe-path", bad)
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("kind", "link"),
    [
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.LNKTYPE, "x/facts.pb"),
        (tarfile.DIRTYPE, ""),
        (tarfile.CHRTYPE, ""),
        (tarfile.BLKTYPE, ""),
        (tarfile.FIFOTYPE, ""),
        (tarfile.CONTTYPE, ""),
    ],
)
def test_non_regular_members(kind: bytes, link: str) -> None:
    entries = unpack(original()[0])
    entries.insert(1, entry(f"{top()}/logs/odd", kind=kind, link=link))
    check(pack(entries), "unsafe-member", "logs/odd")


@pytest.mark.parametrize("kind", [tarfile.DIRTYPE, tarfile.SYMTYPE])
def test_non_regular_members_outside_the_top(kind: bytes) -> None:
    entries = unpack(original()[0])
    entries.insert(0, entry(top() if kind == tarfile.DIRTYPE else "../up", kind=kind, link="/"))
    check(pack(entries), "unsafe-member", top() if kind == tarfile.DIRTYPE else "../up")


def test_setuid_member() -> None:
    entries = unpack(original()[0])
    entries[0][0].mode = 0o4755
    check(pack(entries), "unsafe-member", "facts.pb")


@pytest.mark.parametrize("second", ["facts.pb", "FACTS.PB", "facts.pb/inner", "logs"])
def test_duplicate_or_clashing_members(second: str) -> None:
    entries = unpack(original()[0])
    entries.insert(3, entry(f"{top()}/{second}", b"again"))
    reason = "duplicate-member" if second.lower() == "facts.pb" else "unsafe-path"
    check(pack(entries), reason, second)


def test_resigned_with_another_key() -> None:
    _, key = original()
    thief = SigningKey.generate()
    entries = modify("logs/syslog.txt", lambda d: d.replace(b"Accepted", b"Rejected"))
    manifest = rehash(manifest_of(entries), entries)
    manifest["key"] = {
        "algorithm": "ed25519",
        "public_key": thief.public.b64,
        "fingerprint": thief.fingerprint,
    }
    forged = with_manifest(entries, manifest, thief)
    # Self-consistent, so it passes when no key is pinned -- but it names the thief's key.
    assert verify_bundle(io.BytesIO(forged)).public_key == thief.public
    err = check(forged, "wrong-key", "MANIFEST.json", expected_key=key.public)
    assert thief.fingerprint in str(err)
    check(forged, "wrong-key", "MANIFEST.json", expected_fingerprint=key.fingerprint)


def test_resigned_with_another_key_but_claiming_the_original() -> None:
    _, key = original()
    thief = SigningKey.generate()
    entries = modify("logs/syslog.txt", lambda d: d.replace(b"Accepted", b"Rejected"))
    forged = with_manifest(entries, rehash(manifest_of(entries), entries), thief)
    check(forged, "bad-signature", "MANIFEST.sig")
    check(forged, "bad-signature", "MANIFEST.sig", expected_key=key.public)


def test_manifest_edited_without_resigning() -> None:
    entries = unpack(original()[0])
    manifest = manifest_of(entries)
    manifest["case_id"] = "SR-9999"
    check(with_manifest(entries, manifest, None), "bad-signature", "MANIFEST.sig")


def test_manifest_rehashed_without_resigning() -> None:
    entries = modify("facts.pb", lambda d: b"forged")
    check(
        with_manifest(entries, rehash(manifest_of(entries), entries), None),
        "bad-signature",
        "MANIFEST.sig",
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("members"),
        lambda m: m.update(bundle_id="NOT-HEX"),
        lambda m: m.update(format="casefile-bundle/99"),
        lambda m: m.update(kind="weekly"),
        lambda m: m.update(created_at="yesterday"),
        lambda m: m.update(spec=[]),
        lambda m: m.update(collectors=["x"]),
        lambda m: m["key"].update(algorithm="rsa"),
        lambda m: m["key"].update(fingerprint="sha256:" + "0" * 64),
        lambda m: m["key"].update(public_key="AAAA"),
        lambda m: m["members"][0].update(path="../x"),
        lambda m: m["members"][0].update(size=-1),
        lambda m: m["members"][0].update(size=True),
        lambda m: m["members"][0].update(sha256="XYZ"),
        lambda m: m["members"].append(dict(m["members"][0])),
    ],
)
def test_bad_manifest_fields(edit: Callable[[dict[str, Any]], object]) -> None:
    _, key = original()
    entries = unpack(original()[0])
    manifest = manifest_of(entries)
    edit(manifest)
    check(with_manifest(entries, manifest, key), "bad-manifest", "MANIFEST.json")


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b"\xff\xfe", b'{"a": 1, "a": 2}', b'{"n": NaN}', b"[" * 100_000],
)
def test_unparseable_manifest(body: bytes) -> None:
    _, key = original()
    out = []
    for info, data in unpack(original()[0]):
        if info.name.endswith("/MANIFEST.json"):
            data = body
        elif info.name.endswith("/MANIFEST.sig"):
            data = key.sign(body)
        out.append((info, data))
    check(pack(out), "bad-manifest", "MANIFEST.json")


def test_short_signature() -> None:
    entries = modify("MANIFEST.sig", lambda d: d[:32])
    check(pack(entries), "bad-signature", "MANIFEST.sig")


def test_truncated_file_never_verifies() -> None:
    data, _ = original()
    cuts = sorted(
        {1, 3, 4, 5, 10, 100, len(data) // 2, len(data) - 100, *range(len(data) - 40, len(data))}
    )
    for cut in cuts:
        with pytest.raises(VerificationError) as caught:
            verify_bundle(io.BytesIO(data[:cut]))
        assert caught.value.reason in ("truncated", "corrupt"), (cut, str(caught.value))


def test_truncated_tar_inside_a_complete_zstd_frame() -> None:
    # A well-formed zstd frame around a cut tar: only the tar layer can notice.
    raw = decompress(original()[0])
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        sig = tar.getmembers()[-1]
    end = sig.offset_data + 512  # where the end-of-archive marker starts
    compress = zstandard.ZstdCompressor(level=3, write_checksum=True).compress
    for cut in (end, end + 512, end - 100, sig.offset + 100, 100):
        check(compress(raw[:cut]), "truncated", None)
    check(compress(raw[: sig.offset_data + 10]), "truncated", "MANIFEST.sig")
    # Cutting only padding beyond the two zero blocks loses nothing.
    assert verify_bundle(io.BytesIO(compress(raw[: end + 1024])))


def test_data_after_the_archive_end() -> None:
    raw = decompress(original()[0])
    compress = zstandard.ZstdCompressor(level=3, write_checksum=True).compress
    check(compress(raw + b"hidden payload".ljust(512, b"\0")), "corrupt", None)
    check(compress(raw[:-512] + b"x" + b"\0" * 511), "corrupt", None)
    # Only zero padding after the end marker is what tar(1) itself writes: fine.
    assert verify_bundle(io.BytesIO(compress(raw + b"\0" * 10240)))


def test_garbage_after_the_zstd_frame() -> None:
    data, _ = original()
    check(data + b"trailing garbage", "corrupt", None)


def test_corrupt_middle_header() -> None:
    raw = bytearray(decompress(original()[0]))
    raw[512 * 3 + 10] ^= 0xFF  # somewhere in an early header or data block
    data = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(bytes(raw))
    with pytest.raises(VerificationError):
        verify_bundle(io.BytesIO(data))


@pytest.mark.parametrize(
    ("blob", "reason"),
    [(b"", "corrupt"), (b"garbage" * 100, "corrupt"), (b"\x28\xb5\x2f\xfd", "truncated")],
)
def test_not_a_bundle(blob: bytes, reason: str) -> None:
    check(blob, reason, None)


def test_uncompressed_tar_is_refused() -> None:
    check(pack(unpack(original()[0]), compress=False), "corrupt", None)


def test_empty_zstd_frame() -> None:
    check(zstandard.ZstdCompressor().compress(b""), "corrupt", None)


def test_limits() -> None:
    data, _ = original()
    check(data, "too-many-members", "commands/uptime.txt", max_members=2)
    check(data, "too-large", "logs/syslog.txt", keep=("logs/syslog.txt",), max_member_keep=100)
    check(data, "too-large", "MANIFEST.json", max_manifest_bytes=100)
    with pytest.raises(VerificationError) as caught:
        verify_bundle(io.BytesIO(data), max_total_bytes=10_000)
    assert caught.value.reason == "too-large"


def test_decompression_bomb_stops_early() -> None:
    # 64 MiB of zeros in a ~2 KiB file: refused once the cap is passed, not after.
    entries = [entry(f"{top()}/bomb.bin", b"\0" * (64 << 20))]
    bomb = pack(entries)
    assert len(bomb) < 64 << 10
    check(bomb, "too-large", "bomb.bin", max_total_bytes=1 << 20)


# -- decompression bombs: bounded before the manifest is known ------------------------


def test_seven_gib_bomb_is_refused_at_its_header() -> None:
    """A 7 GiB zero member in ~230 KB, not in the manifest: before, the whole 7 GiB was
    decompressed and hashed (15 s here) before "extra-member"; now its tar header alone
    is over the bound (1000 x the compressed size) and it is refused there."""
    data, key = original()
    bomb = zero_bomb(data)
    assert len(bomb) < 300_000
    meter = ReadMeter()
    err = check(bomb, "too-large", "bomb.bin", expected_key=key.public, meter=meter)
    assert "member bomb.bin is 7,516,192,768 bytes by its tar header" in str(err)
    assert f"a bundle of {len(bomb):,} bytes (ratio 1000" in str(err)
    assert meter.decompressed < 1 << 20, meter  # headers and the small members only
    assert meter.compressed <= len(bomb)


def test_bomb_within_the_bound_costs_no_more_than_the_bound() -> None:
    """An attacker who sizes the zeros to stay under the bound gets the bound's worth of
    work, then the refusal naming the member; one byte more is refused at the header."""
    data, key = original()
    kw: dict[str, Any] = {"expected_key": key.public, "max_ratio": 100, "ratio_floor": 4 << 20}
    under = zero_bomb(data, zeros=3 << 20)
    meter = ReadMeter()
    check(under, "extra-member", "bomb.bin", meter=meter, **kw)
    assert 3 << 20 < meter.decompressed <= 4 << 20
    over = zero_bomb(data, zeros=4 << 20)
    meter = ReadMeter()
    check(over, "too-large", "bomb.bin", meter=meter, **kw)
    assert meter.decompressed <= 256 << 10
    # Padding raises the compressed size, and with it the bound: at most 100 x.
    padded = zero_bomb(data, zeros=16 << 20, padding=os.urandom(150_000))
    meter = ReadMeter()
    check(padded, "extra-member", "padding.bin", meter=meter, **kw)
    assert meter.decompressed <= 100 * len(padded)


def test_oversized_extended_header_is_refused_unread() -> None:
    """A pax header declaring 1 GiB: tarfile reads a pax header whole into memory, so
    before, 14 KB made the verifier hold 1.1 GiB (and parse it for minutes)."""
    data, _ = original()
    meter = ReadMeter()
    err = check(pax_bomb(data), "too-large", None, meter=meter)
    assert "extended tar header at offset 0 declares 1,073,741,824 bytes" in str(err)
    assert meter.decompressed < 1 << 20


def test_bound_without_a_known_size_is_the_absolute_cap() -> None:
    """A stream of unknown length (a pipe) gets only ``max_total_bytes``: still bounded."""
    data, _ = original()

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._src = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            chunk = self._src.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    meter = ReadMeter()
    with pytest.raises(VerificationError) as caught:
        verify_bundle(Pipe(zero_bomb(data, zeros=8 << 20)), max_total_bytes=2 << 20, meter=meter)
    assert (caught.value.reason, caught.value.member) == ("too-large", "bomb.bin")
    assert meter.decompressed <= 256 << 10


def test_offline_verify_of_a_bomb_is_bounded_the_same_way(tmp_path: Path) -> None:
    """`casefile verify` reads the file by path: the same bound from its size."""
    import subprocess
    import sys

    data, _ = original()
    path = tmp_path / "bomb.tar.zst"
    path.write_bytes(zero_bomb(data))
    casefile = Path(sys.executable).parent / "casefile"
    res = subprocess.run([str(casefile), "verify", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res
    assert "member bomb.bin is 7,516,192,768 bytes by its tar header" in res.stderr
    assert "refused before reading it" in res.stderr


def test_swapped_in_bomb_stops_the_member_stream_at_its_header(tmp_path: Path) -> None:
    """Re-reading a verified bundle, the manifest is known first: a member it does not
    list stops the read at its header, and the total is bounded by what it declares."""
    data, key = original()
    path = tmp_path / "b.tar.zst"
    path.write_bytes(data)
    verified = verify_bundle(path, expected_key=key.public)
    path.write_bytes(zero_bomb(data, name="logs/zz.txt"))  # sorted after the listed logs
    with pytest.raises(VerificationError) as caught:
        for stream in iter_members(path, verified, lambda p: p.startswith("logs/")):
            stream.read()
    assert (caught.value.reason, caught.value.member) == ("extra-member", "logs/zz.txt")
    bigger = modify("logs/syslog.txt", lambda d: d + b"x" * 10)
    path.write_bytes(pack(bigger))
    with pytest.raises(VerificationError) as caught:
        for stream in iter_members(path, verified, lambda p: p.startswith("commands/")):
            stream.read()
    assert (caught.value.reason, caught.value.member) == ("size-mismatch", "logs/syslog.txt")


def test_outcome_crosses_a_process_boundary(tmp_path: Path) -> None:
    """What the collector's verifier process sends back pickles, and turns back into the
    same bundle or the same refusal (a VerificationError itself does not unpickle)."""
    import pickle

    from agent.bundle.outcome import verify_outcome

    data, key = original()
    good, bomb = tmp_path / "good.tar.zst", tmp_path / "bomb.tar.zst"
    good.write_bytes(data)
    bomb.write_bytes(zero_bomb(data))
    ok = pickle.loads(pickle.dumps(verify_outcome(good, expected_key=key.public)))
    assert ok.result().members == verify_bundle(good).members and ok.decompressed > 0
    refused = pickle.loads(pickle.dumps(verify_outcome(bomb, expected_key=key.public)))
    with pytest.raises(VerificationError) as caught:
        refused.result()
    assert (caught.value.reason, caught.value.member) == ("too-large", "bomb.bin")
    assert refused.decompressed < 1 << 20


def test_path_is_recorded_on_errors(tmp_path: Path) -> None:
    target = tmp_path / "x.tar.zst"
    target.write_bytes(b"junk")
    with pytest.raises(VerificationError) as caught:
        verify_bundle(target)
    assert caught.value.path == str(target)


# -- property tests -----------------------------------------------------------------

# Modest by default so the suite stays fast; raise it for a deeper local run.
FUZZ = settings(
    max_examples=int(os.environ.get("CASEFILE_FUZZ_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(st.data())
def test_random_byte_flips(data: st.DataObject) -> None:
    good, key = original()
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)), min_size=1, max_size=4
        )
    )
    bad = bytearray(good)
    for index, mask in flips:
        bad[index] ^= mask
    try:
        vb = verify_bundle(io.BytesIO(bytes(bad)), expected_key=key.public)
    except VerificationError:
        return
    # A flip may only pass if it changed nothing that is read: e.g. a zstd window
    # size that is still large enough. The decompressed archive must be identical.
    assert decompress(bytes(bad)) == decompress(good)
    assert vb.manifest_bytes == unpack(good)[-2][1]


@FUZZ
@given(st.integers(0, 10**9))
def test_random_truncations(cut: int) -> None:
    good, _ = original()
    with pytest.raises(VerificationError):
        verify_bundle(io.BytesIO(good[: cut % len(good)]))


NAMES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=40
) | st.sampled_from(["MANIFEST.json", "MANIFEST.sig", "t/MANIFEST.json", "t/MANIFEST.sig", "t/a"])
KINDS = st.sampled_from(
    [
        tarfile.REGTYPE,
        tarfile.REGTYPE,
        tarfile.SYMTYPE,
        tarfile.DIRTYPE,
        tarfile.LNKTYPE,
        tarfile.FIFOTYPE,
    ]
)


@FUZZ
@given(st.lists(st.tuples(NAMES, st.binary(max_size=200), KINDS), max_size=6))
def test_random_archives_are_rejected_cleanly(members: list[tuple[str, bytes, bytes]]) -> None:
    entries = [entry(name, data, kind, "t/a") for name, data, kind in members if name]
    with pytest.raises(VerificationError):
        verify_bundle(io.BytesIO(pack(entries)))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_tar_bytes_are_rejected_cleanly(blob: bytes) -> None:
    # Valid zstd around garbage, so the tar parser itself sees hostile input.
    with pytest.raises(VerificationError):
        verify_bundle(io.BytesIO(zstandard.ZstdCompressor().compress(blob)))


@FUZZ
@given(st.integers(0, 10**9), st.binary(min_size=1, max_size=64))
def test_corrupted_tar_stream_inside_valid_zstd(offset: int, junk: bytes) -> None:
    good, key = original()
    raw = decompress(good)
    at = offset % len(raw)
    bad = raw[:at] + junk + raw[at + len(junk) :]
    if bad == raw:
        return
    packed = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(bad[: len(raw)])
    try:
        verify_bundle(io.BytesIO(packed), expected_key=key.public)
    except VerificationError:
        return
    # Tar headers and padding are not signed; what is signed -- every name and
    # every byte of content -- must be exactly the original's.
    assert [(i.name, d) for i, d in unpack(packed)] == [(i.name, d) for i, d in unpack(good)]
