"""Decompression bombs built from real signed bundles, for the tests that refuse them.

A bomb here is a real bundle (its signed manifest untouched) with one more member of
zeros inserted before MANIFEST.json. The zeros are written as zstd RLE blocks (4 bytes
per 128 KiB), so 7 GiB cost about 230 KB: exactly what a hostile agent can upload.
"""

from __future__ import annotations

import io
import tarfile

import zstandard

_MAGIC = (0xFD2FB528).to_bytes(4, "little")
_BLOCK = 128 << 10


def _block(kind: int, size: int, body: bytes, last: bool = False) -> bytes:
    """A zstd block header (raw=0, RLE=1) and its body."""
    return ((size << 3) | (kind << 1) | int(last)).to_bytes(3, "little") + body


class _Frame:
    """One zstd frame written block by block: no content size, a 1 MiB window."""

    def __init__(self) -> None:
        self.out = bytearray(_MAGIC + bytes([0x00, 0x50]))

    def raw(self, data: bytes) -> None:
        for i in range(0, len(data), _BLOCK):
            piece = data[i : i + _BLOCK]
            self.out += _block(0, len(piece), piece)

    def zeros(self, count: int) -> None:
        whole, rest = divmod(count, _BLOCK)
        self.out += _block(1, _BLOCK, b"\0") * whole
        if rest:
            self.out += _block(1, rest, b"\0")

    def close(self, data: bytes) -> bytes:
        self.raw(data[:-1])
        self.out += _block(0, 1, data[-1:], last=True)
        return bytes(self.out)


def _split_before_manifest(bundle: bytes) -> tuple[bytes, bytes, str]:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(bundle)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        manifest = next(i for i in tar.getmembers() if i.name.endswith("/MANIFEST.json"))
    return raw[: manifest.offset], raw[manifest.offset :], manifest.name.split("/")[0]


def zero_bomb(bundle: bytes, *, name: str = "bomb.bin", zeros: int = 7 << 30, padding: bytes = b"") -> bytes:
    """``bundle`` with an unlisted member ``name`` of ``zeros`` zero bytes before its manifest.

    ``padding``, if given, goes in as a second unlisted member first: incompressible
    bytes that raise the compressed size, as an attacker does to raise a ratio bound.
    """
    head, tail, top = _split_before_manifest(bundle)
    frame = _Frame()
    frame.raw(head)
    if padding:
        info = tarfile.TarInfo(f"{top}/padding.bin")
        info.size, info.mode = len(padding), 0o600
        frame.raw(info.tobuf(format=tarfile.PAX_FORMAT) + padding + b"\0" * (-len(padding) % 512))
    info = tarfile.TarInfo(f"{top}/{name}")
    info.size, info.mode = zeros, 0o600
    frame.raw(info.tobuf(format=tarfile.PAX_FORMAT))
    frame.zeros(zeros + (-zeros % 512))
    return frame.close(tail)


def pax_bomb(bundle: bytes, *, size: int = 1 << 30) -> bytes:
    """``bundle`` led by a pax extended header declaring ``size`` bytes (tarfile reads one whole)."""
    head, tail, top = _split_before_manifest(bundle)
    info = tarfile.TarInfo(f"{top}/PaxHeaders/x")
    info.type, info.size = tarfile.XHDTYPE, size
    frame = _Frame()
    frame.raw(info.tobuf(format=tarfile.USTAR_FORMAT))
    frame.out += _block(1, _BLOCK, b"1") * (size // _BLOCK)
    return frame.close(head + tail)
