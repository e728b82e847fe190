"""Windows fragmentation: ``Win32_Volume.DefragAnalysis`` (WMI), else ``defrag X: /A /V`` text.

WMI is preferred because it is locale-independent. ``defrag`` prints localised labels
in the console code page, so the fallback parser knows the English and German labels
and both decimal conventions ("29.43 GB", "29,43 GB"). Both need an elevated prompt;
ReFS volumes answer "not supported" (ReFS gets ReTrim/SlabConsolidate, not defrag).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping

from protos import facts_pb2

# One object per volume, drive letter kept: the plain Invoke-CimMethod output drops it.
POWERSHELL_DEFRAG_ANALYSIS = (
    "Get-CimInstance Win32_Volume -Filter 'DriveType=3' | ForEach-Object { "
    "$r = Invoke-CimMethod -InputObject $_ -MethodName DefragAnalysis; "
    "[pscustomobject]@{DriveLetter=$_.DriveLetter; Name=$_.Name; FileSystem=$_.FileSystem; "
    "ReturnValue=$r.ReturnValue; DefragRecommended=$r.DefragRecommended; "
    "DefragAnalysis=($r.DefragAnalysis | Select-Object * -ExcludeProperty Cim*)} } "
    "| ConvertTo-Json -Depth 3"
)

RETURN_CODES = {
    1: "access denied (needs an elevated prompt)",
    2: "not supported on this volume",
    3: "volume dirty bit is set (run chkdsk)",
    4: "not enough free space",
    5: "corrupt master file table",
    6: "call cancelled",
    7: "call cancelled",
    8: "defragmentation engine is already running",
    9: "could not connect to the defragmentation engine",
    10: "defragmentation engine error",
    11: "unknown error",
}


class DefragParseError(ValueError):
    """Output that is not what DefragAnalysis or defrag /A /V print."""


def _num(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def parse_defrag_analysis_json(text: str) -> list[facts_pb2.FsFragmentation]:
    """One FsFragmentation per volume in ConvertTo-Json output (one object or a list)."""
    try:
        data = json.loads(text.lstrip("\ufeff") or "null")
    except json.JSONDecodeError as exc:
        raise DefragParseError(f"DefragAnalysis output is not JSON: {exc}") from None
    if data is None:
        return []
    items = data if isinstance(data, list) else [data]
    return [_volume(item, i) for i, item in enumerate(items)]


def _volume(item: object, index: int) -> facts_pb2.FsFragmentation:
    if not isinstance(item, Mapping):
        raise DefragParseError(f"DefragAnalysis item {index} is not an object")
    analysis = item.get("DefragAnalysis")
    analysis = analysis if isinstance(analysis, Mapping) else {}
    mount = item.get("DriveLetter") or item.get("Name") or analysis.get("VolumeName") or ""
    out = facts_pb2.FsFragmentation(
        mountpoint=str(mount),
        device=str(item.get("Name") or analysis.get("VolumeName") or ""),
        fstype=str(item.get("FileSystem") or ""),
        method="wmi-defraganalysis",
    )
    rc = item.get("ReturnValue", 0)
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        out.note = f"DefragAnalysis returned {rc}: {RETURN_CODES.get(rc, 'unknown code')}"
        return out
    if not analysis:
        out.note = "DefragAnalysis returned no analysis"
        return out
    files = int(_num(analysis.get("TotalFiles")))
    fragmented = int(_num(analysis.get("TotalFragmentedFiles")))
    out.files_sampled = files
    out.files_fragmented = fragmented
    if files:
        out.pct_files_fragmented = 100.0 * fragmented / files
    out.fragments_mean = _num(analysis.get("AverageFragmentsPerFile"))
    out.vendor_fragmented_pct = _num(analysis.get("FilePercentFragmentation"))
    free = facts_pb2.FreeSpaceFragmentation(
        available=True,
        free_extents=int(_num(analysis.get("TotalFreeSpaceExtents"))),
        avg_free_extent_bytes=_num(analysis.get("AverageFreeSpacePerExtent")),
        largest_free_extent_bytes=int(_num(analysis.get("LargestFreeSpaceExtent"))),
        vendor_fragmented_pct=_num(analysis.get("FreeSpacePercentFragmentation")),
    )
    out.free_space.CopyFrom(free)
    notes = [
        f"whole-volume analysis by the Windows defragmentation engine; "
        f"total fragmentation {_num(analysis.get('TotalPercentFragmentation')):g} %, "
        f"free space fragmentation {_num(analysis.get('FreeSpacePercentFragmentation')):g} %, "
        f"MFT fragments {int(_num(analysis.get('TotalMFTFragments')))}"
    ]
    if item.get("DefragRecommended") is True:
        notes.append("Windows recommends defragmenting this volume")
    out.note = "; ".join(notes)
    return out


# --- defrag /A /V text -----------------------------------------------------------------

# label (lowercased, spaces normalised) -> our key.
_ENGLISH = {
    "volume size": "volume_size",
    "total fragmented space": "fragmented_pct",
    "average fragments per file": "fragments_mean",
    "movable files and folders": "movable",
    "fragmented files": "fragmented_files",
    "total file fragments": "file_fragments",
    "free space count": "free_count",
    "average free space size": "free_avg",
    "largest free space size": "free_largest",
    "total mft fragments": "mft_fragments",
}
_GERMAN = {
    "volumegröße": "volume_size",
    "gesamter fragmentierter speicherplatz": "fragmented_pct",
    "durchschnittliche fragmente pro datei": "fragments_mean",
    "verschiebbare dateien und ordner": "movable",
    "fragmentierte dateien": "fragmented_files",
    "dateifragmente gesamt": "file_fragments",
    "anzahl freier speicherplatzbereiche": "free_count",
    "durchschnittliche größe freier speicherplatzbereiche": "free_avg",
    "größter freier speicherplatzbereich": "free_largest",
    "mft-fragmente gesamt": "mft_fragments",
}
_LABELS = {**_ENGLISH, **_GERMAN}
_UNITS = {"b": 1, "bytes": 1, "byte": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
_LINE = re.compile(r"^\s*(?P<label>[^=]+?)\s*=\s*(?P<value>.+?)\s*$")
_VALUE = re.compile(r"^(?P<num>[0-9][0-9.,\u00a0 ']*)\s*(?P<unit>%|[A-Za-z]+)?$")
_DRIVE = re.compile(r"\((?P<drive>[A-Za-z]:)\)")
_NOT_NEEDED = ("you do not need to defragment", "keine defragmentierung", "nicht defragmentiert werden")
_NEEDED = ("you should defragment", "sollten dieses volume defragmentieren", "sollten das volume defragmentieren")


def decode_console(raw: bytes) -> str:
    """defrag writes UTF-16 when redirected on some builds, the OEM code page on others."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[1:200:2].count(0) > 20:
        return raw.decode("utf-16", "replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp850", "replace")


def parse_number(text: str, comma_decimal: bool) -> float:
    """"1,05" / "1.05" / "53518" / "1.234,5" → float, with the locale's decimal mark."""
    t = text.replace("\u00a0", "").replace(" ", "").replace("'", "")
    # German: "1.234,5"; English: "1,234.5".
    t = t.replace(".", "").replace(",", ".") if comma_decimal else t.replace(",", "")
    try:
        return float(t)
    except ValueError:
        raise DefragParseError(f"not a number: {text!r}") from None


def _pairs(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            label = " ".join(m["label"].split()).lower()
            yield label, m["value"]


def parse_defrag_text(text: str, mountpoint: str = "") -> facts_pb2.FsFragmentation:
    """``defrag X: /A /V`` output (English or German) → FsFragmentation."""
    german = any(label in _GERMAN for label, _ in _pairs(text))
    values: dict[str, tuple[float, str]] = {}
    for label, raw in _pairs(text):
        key = _LABELS.get(label)
        if key is None:
            continue
        m = _VALUE.match(raw)
        if not m:
            raise DefragParseError(f"defrag output: value {raw!r} of {label!r} is not a number")
        values[key] = (parse_number(m["num"], german), (m["unit"] or "").lower())
    if "fragments_mean" not in values and "fragmented_files" not in values:
        raise DefragParseError("defrag output holds no fragmentation figures (not /A /V output?)")
    drive = _DRIVE.search(text)
    out = facts_pb2.FsFragmentation(
        mountpoint=mountpoint or (drive["drive"].upper() + "\\" if drive else ""),
        method="defrag-output",
    )

    def number(key: str) -> float:
        return values.get(key, (0.0, ""))[0]

    def size(key: str) -> float:
        value, unit = values.get(key, (0.0, ""))
        return value * _UNITS.get(unit, 1)

    movable = int(number("movable"))
    fragmented = int(number("fragmented_files"))
    out.files_sampled = movable
    out.files_fragmented = fragmented
    if movable:
        out.pct_files_fragmented = 100.0 * fragmented / movable
    out.fragments_mean = number("fragments_mean")
    out.vendor_fragmented_pct = number("fragmented_pct")
    if "free_count" in values:
        out.free_space.CopyFrom(
            facts_pb2.FreeSpaceFragmentation(
                available=True,
                free_extents=int(number("free_count")),
                avg_free_extent_bytes=size("free_avg"),
                largest_free_extent_bytes=int(size("free_largest")),
            )
        )
    lowered = text.lower()
    notes = [
        f"parsed defrag /A /V output ({'German' if german else 'English'} labels); "
        f"total file fragments {int(number('file_fragments'))}, MFT fragments {int(number('mft_fragments'))}"
    ]
    if any(s in lowered for s in _NEEDED):
        notes.append("Windows recommends defragmenting this volume")
    elif any(s in lowered for s in _NOT_NEEDED):
        notes.append("Windows says no defragmentation is needed")
    out.note = "; ".join(notes)
    return out
