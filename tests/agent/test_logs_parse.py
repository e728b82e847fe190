"""Log line parsers: text timestamps, journal JSON, kernel records, Windows and macOS output."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collect.logparse import (
    LOG_SOURCES_KEY,
    dmesg_record,
    guess_severity,
    journal_record,
    kmsg_record,
    log_source_entry,
    macos_record,
    parse_text_line,
    parse_wevtutil_xml,
    read_lines_backwards,
    truncation_entries,
)
from protos import facts_pb2

FIXTURES = Path(__file__).parent.parent / "fixtures" / "logs"
HINT = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
UTC = dt.UTC


def _local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second).astimezone().astimezone(UTC)


def test_rfc3164_year_is_inferred_and_local_time_becomes_utc() -> None:
    ts, sev, msg = parse_text_line("Nov 23 10:00:01 fs01 sshd[812]: Accepted key", year_hint=HINT)
    assert ts == _local(2026, 11, 23, 10, 0, 1) and sev is None
    assert msg == "fs01 sshd[812]: Accepted key"
    # A December line read in January belongs to last year.
    ts, _sev, _msg = parse_text_line("Dec 31 23:59:59 x y", year_hint=HINT.replace(month=1, day=2))
    assert ts == _local(2025, 12, 31, 23, 59, 59)
    # Single-digit days are space padded; Feb 29 finds the last leap year.
    assert parse_text_line("Feb  3 01:02:03 a", year_hint=HINT)[0] == _local(2026, 2, 3, 1, 2, 3)
    assert parse_text_line("Feb 29 01:02:03 a", year_hint=HINT)[0] == _local(2024, 2, 29, 1, 2, 3)


def test_iso_rfc5424_and_dpkg_forms() -> None:
    ts, sev, msg = parse_text_line("<11>1 2026-11-23T10:00:01.003Z fs01 app 1 - - boom", year_hint=HINT)
    assert ts == dt.datetime(2026, 11, 23, 10, 0, 1, 3000, UTC)
    assert sev == "err" and msg == "fs01 app 1 - - boom"
    ts, _s, msg = parse_text_line("2026-11-23T10:00:01.123456789+01:00 h p: m", year_hint=HINT)
    assert ts == dt.datetime(2026, 11, 23, 9, 0, 1, 123456, UTC) and msg == "h p: m"
    ts, _s, _m = parse_text_line("2026-11-23T10:00:01+0100 DEBUG dnf", year_hint=HINT)
    assert ts == dt.datetime(2026, 11, 23, 9, 0, 1, tzinfo=UTC)
    ts, _s, msg = parse_text_line("2026-11-23 10:00:01 status installed bash:amd64 5.2", year_hint=HINT)
    assert ts == _local(2026, 11, 23, 10, 0, 1) and msg.startswith("status installed")


def test_lines_without_a_timestamp_and_impossible_dates() -> None:
    assert parse_text_line("    at java.lang.Thread.run", year_hint=HINT) == (
        None,
        None,
        "    at java.lang.Thread.run",
    )
    assert parse_text_line("2026-13-45 10:00:01 nope", year_hint=HINT)[0] is None
    assert parse_text_line("Foo 12 10:00:01 x", year_hint=HINT)[0] is None


def test_severity_is_guessed_from_keywords_only() -> None:
    assert guess_severity("kernel panic - not syncing") == "emerg"
    assert guess_severity("FATAL: database is down") == "crit"
    assert guess_severity("Failed password for root") == "err"
    assert guess_severity("warning: disk almost full") == "warning"
    assert guess_severity("terror in the errand") is None  # words, not substrings
    assert guess_severity("session opened") is None


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_text_parser_never_raises(line: str) -> None:
    ts, sev, msg = parse_text_line(line, year_hint=HINT)
    assert ts is None or ts.tzinfo is not None
    assert sev is None or sev in ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
    assert isinstance(msg, str)


def test_journal_messages_as_text_bytes_and_null() -> None:
    base = {
        "__REALTIME_TIMESTAMP": "1795428001123456",
        "PRIORITY": "3",
        "_PID": "812",
        "SYSLOG_IDENTIFIER": "sshd",
        "_SYSTEMD_UNIT": "ssh.service",
    }
    rec = journal_record(json.dumps({**base, "MESSAGE": "error: kex"}))
    assert rec is not None and rec.msg == "error: kex" and rec.sev == "err"
    assert rec.ts == dt.datetime.fromtimestamp(1795428001.123456, UTC)
    assert rec.extra == {"unit": "ssh.service", "ident": "sshd", "pid": 812}
    raw = [*"caf\u00e9 ".encode(), 0xFF, 0x41]  # invalid UTF-8 arrives as byte values
    rec = journal_record(json.dumps({**base, "MESSAGE": raw}))
    assert rec is not None and rec.msg == "café \ufffdA"
    rec = journal_record(json.dumps({**base, "MESSAGE": None, "PRIORITY": "x"}))
    assert rec is not None and "too large" in rec.msg and rec.sev is None
    rec = journal_record(json.dumps({"MESSAGE": "no time"}))
    assert rec is not None and rec.ts is None
    assert journal_record(b"[1, 2]") is None
    assert journal_record(b"{broken") is None


@given(
    st.dictionaries(
        st.sampled_from(["MESSAGE", "PRIORITY", "__REALTIME_TIMESTAMP", "_PID"]),
        st.one_of(st.none(), st.text(max_size=20), st.integers(), st.lists(st.integers(), max_size=5)),
    )
)
def test_journal_parser_never_raises(obj: dict[str, object]) -> None:
    rec = journal_record(json.dumps(obj))
    assert rec is not None and isinstance(rec.msg, str)


# One occurrence of a journal field as journalctl -o json prints it: text, bytes, or null.
_FIELD_VALUE = st.one_of(st.text(max_size=20), st.lists(st.integers(0, 255), max_size=8), st.none())


@given(st.lists(_FIELD_VALUE, min_size=1, max_size=4))
def test_repeated_journal_field_keeps_every_value(values: list[object]) -> None:
    # A field repeated in one entry arrives as an array of its values (journalctl(1)).
    rec = journal_record(json.dumps({"MESSAGE": values}))
    assert rec is not None
    decoded = [
        v if isinstance(v, str) else bytes(v).decode("utf-8", "replace") if isinstance(v, list) else None
        for v in values
    ]
    assert rec.msg == "\n".join(
        d if d is not None else "[message omitted by journalctl: field too large]" for d in decoded
    )


def test_byte_array_message_is_not_a_repeated_field() -> None:
    rec = journal_record(json.dumps({"MESSAGE": [104, 105]}))
    assert rec is not None and rec.msg == "hi"
    rec = journal_record(json.dumps({"MESSAGE": []}))
    assert rec is not None and rec.msg == ""


def _snapshot_with(plugin_facts: dict[str, str]) -> facts_pb2.Snapshot:
    snap = facts_pb2.Snapshot()
    snap.logs.sources.add(name="syslog", artifact="logs/syslog.jsonl", truncated=True, lines_dropped=7)
    snap.logs.sources.add(name="kernel", truncated=True, lines_dropped=3)  # cut to nothing
    snap.logs.sources.add(name="auth", artifact="logs/auth.jsonl")  # whole
    snap.plugin_facts.update(plugin_facts)
    return snap


def test_truncation_entries_list_sources_cut_to_nothing_and_plugins() -> None:
    cut = log_source_entry(
        "postgresql", artifact="", lines=0, bytes_kept=0, truncated=True, lines_dropped=0, error="not kept"
    )
    whole = log_source_entry(
        "app", artifact="logs/app.jsonl", lines=3, bytes_kept=300, truncated=False, lines_dropped=0
    )
    snap = _snapshot_with({"pgsql": json.dumps({LOG_SOURCES_KEY: [cut, whole]}), "other": "{}"})
    entries = truncation_entries(snap)
    assert [(e["member"], e["source"], e["lines_dropped"]) for e in entries] == [
        ("logs/syslog.jsonl", "syslog", 7),
        ("", "kernel", 3),
        ("", "pgsql/postgresql", 0),
    ]
    assert "newest lines kept" in str(entries[0]["reason"]) and "no member" in str(entries[1]["reason"])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_SOURCE_ITEM = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=8), st.integers()),
        "artifact": st.one_of(st.text(max_size=8), st.none()),
        "truncated": st.one_of(st.booleans(), st.integers(0, 1)),
        "lines_dropped": st.one_of(st.integers(-5, 10), st.booleans(), st.text(max_size=3)),
    },
)


@given(st.one_of(_JSON, st.dictionaries(st.just(LOG_SOURCES_KEY), st.lists(_SOURCE_ITEM | _JSON, max_size=4))))
def test_truncation_entries_take_only_well_typed_plugin_reports(facts: object) -> None:
    # Plugin facts are third-party JSON: anything reaches the manifest only well-typed.
    entries = truncation_entries(_snapshot_with({"plug": json.dumps(facts)}))
    assert entries[:2] == truncation_entries(_snapshot_with({}))
    for e in entries[2:]:
        assert isinstance(e["member"], str) and isinstance(e["source"], str)
        assert str(e["source"]).startswith("plug/") and len(str(e["source"])) > len("plug/")
        dropped = e["lines_dropped"]
        assert isinstance(dropped, int) and not isinstance(dropped, bool) and dropped >= 0


def test_kmsg_and_dmesg_records_use_boot_time() -> None:
    boot = dt.datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    rec = kmsg_record(
        b"3,1234,5000000,-,caller=T1;EXT4-fs error (device sda1): bad\\x20block\n SUBSYSTEM=block\n DEVICE=b8:1\n", boot
    )
    assert rec is not None
    assert rec.ts == boot + dt.timedelta(seconds=5) and rec.sev == "err"
    assert rec.msg == "EXT4-fs error (device sda1): bad block"
    assert rec.extra["subsystem"] == "block" and rec.extra["seq"] == 1234
    assert kmsg_record(b"garbage without separator", boot) is None
    assert kmsg_record(b"x,y;text", boot) is None
    rec = dmesg_record("<4>[   12.500000] usb 1-1: reset high-speed USB device", boot)
    assert rec is not None and rec.sev == "warning"
    assert rec.ts == boot + dt.timedelta(seconds=12.5)
    plain = dmesg_record("[    0.000001] Linux version", boot)
    assert plain is not None and plain.sev is None
    assert dmesg_record("", boot) is None


@given(st.binary(max_size=120))
def test_kmsg_parser_never_raises(raw: bytes) -> None:
    kmsg_record(raw, HINT)


def test_wevtutil_system_channel() -> None:
    data = (FIXTURES / "wevtutil_system_en.xml").read_bytes()
    chunks = [data[i : i + 97] for i in range(0, len(data), 97)]  # arbitrary cuts
    records = list(parse_wevtutil_xml(chunks))
    assert [r.extra.get("event_id") for r in records] == [7031, 98, 41, 153, 6013]
    scm, ntfs, power, disk, odd = records
    assert scm.sev == "err" and "terminated unexpectedly" in scm.msg
    assert scm.extra["key"] == "Service Control Manager/7031" and scm.extra["record"] == 98231
    assert scm.ts == dt.datetime(2026, 11, 23, 10, 15, 42, 551234, UTC)
    assert ntfs.sev == "info" and ntfs.extra["key"] == "Ntfs/98"
    assert power.sev == "crit" and "BugcheckCode=0" in power.msg  # not rendered: EventData
    assert disk.sev == "warning" and "\n" in disk.msg and "&" in disk.msg
    assert odd.ts is None and odd.sev == "info"


def test_wevtutil_localised_refs_channel_counts_ids() -> None:
    records = list(parse_wevtutil_xml([(FIXTURES / "wevtutil_refs_de.xml").read_bytes()]))
    # Severity comes from the numeric level, never the localised "Fehler"/"Warnung".
    assert [(r.extra["key"], r.sev) for r in records] == [
        ("ReFS/147", "err"),
        ("ReFS/147", "err"),
        ("ReFS/149", "warning"),
    ]
    assert "langsame E/A-Anforderung" in records[0].msg
    assert "Volume=R:" in records[2].msg or "R:" in records[2].msg


def test_wevtutil_cut_output_raises_after_the_whole_events() -> None:
    data = (FIXTURES / "wevtutil_system_en.xml").read_bytes()
    got = []
    with pytest.raises(SyntaxError):
        for rec in parse_wevtutil_xml([data[: len(data) - 40]]):
            got.append(rec)
    assert len(got) == 4


def test_macos_ndjson() -> None:
    lines = (FIXTURES / "macos_unified.ndjson").read_bytes().splitlines()
    records = [macos_record(line) for line in lines]
    info, apfs, backup, untyped, odd, junk, summary = records
    assert info is not None and info.sev == "info"
    assert apfs is not None and apfs.sev == "err" and apfs.extra["subsystem"] == "com.apple.apfs"
    assert apfs.ts == dt.datetime(2026, 11, 23, 9, 1, 2, 123456, UTC)
    assert backup is not None and backup.sev == "crit" and backup.msg.count("\n") == 2
    assert untyped is not None and untyped.sev is None and "pid" not in untyped.extra
    assert odd is not None and odd.ts is None and odd.sev == "notice"
    assert junk is None and summary is None


@settings(max_examples=200)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=64))
def test_backwards_reader_returns_every_line_newest_first(data: bytes, block: int) -> None:
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        got = list(read_lines_backwards(fh, block_size=block))
    body = data[:-1] if data.endswith(b"\n") else data
    lines = body.split(b"\n") if data else []
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    assert got == list(zip(offsets, [x.rstrip(b"\r") for x in lines], strict=True))[::-1]


def test_backwards_reader_cuts_giant_lines() -> None:
    from agent.collect.logparse.backwards import MAX_LINE_BYTES

    blob = b"x" * (MAX_LINE_BYTES * 2 + 10) + b"\nlast\n"
    with tempfile.TemporaryFile() as fh:
        fh.write(blob)
        fh.flush()
        got = list(read_lines_backwards(fh, block_size=65536))
    assert got[0] == (len(blob) - 5, b"last")
    assert sum(len(line) for _o, line in got[1:]) == MAX_LINE_BYTES * 2 + 10
    assert all(len(line) <= MAX_LINE_BYTES for _o, line in got)
