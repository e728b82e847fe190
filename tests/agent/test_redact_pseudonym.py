"""Pseudonyms: keyed, stable across artifacts and runs, reversible only on this machine."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.redact import (
    Harvested,
    Pseudonymizer,
    Redactor,
    get_profile,
    load_mapping,
    load_or_create_redact_key,
    redact_message,
    unmask_text,
)
from protos import facts_pb2


def private(home: Path, harvested: Harvested | None = None) -> Redactor:
    key = load_or_create_redact_key(home)
    assert key is not None
    return Redactor(get_profile("private"), harvested=harvested, pseudonymizer=Pseudonymizer(key, home=home))


def test_key_and_map_are_private_files(tmp_path: Path) -> None:
    r = private(tmp_path)
    r.redact_text("from 10.1.2.3", "a")
    assert r.pseudo is not None
    r.pseudo.flush()
    for name in ("redact.key", "redact-map.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_one_address_in_three_artifacts_and_a_later_run_is_one_token(tmp_path: Path) -> None:
    r = private(tmp_path)
    outs = [r.redact_text(f"{a}: peer 10.1.2.3 said hi", a) for a in ("logs/a", "logs/b", "commands/c")]
    tokens = {o.split()[2] for o in outs}
    assert len(tokens) == 1
    (token,) = tokens
    assert token.startswith("ip4-private-") and len(token) == len("ip4-private-") + 12
    assert r.pseudo is not None
    r.pseudo.flush()
    again = private(tmp_path).redact_text("10.1.2.3", "x")
    assert again == token
    restored, n, unknown = unmask_text(f"see {token} and ip4-public-000000000000", load_mapping(tmp_path))
    assert restored == "see 10.1.2.3 and ip4-public-000000000000" and (n, unknown) == (1, 1)


def test_classes_kept_and_loopback_left(tmp_path: Path) -> None:
    r = private(tmp_path)
    out = r.redact_text("127.0.0.1 8.8.4.4 10.0.0.1 fe80::1%eth0 ::1 255.255.255.0 2606:4700::1111 10:00:00", "x")
    parts = out.split()
    assert parts[0] == "127.0.0.1"
    assert parts[1].startswith("ip4-public-")
    assert parts[2].startswith("ip4-private-")
    assert parts[3].startswith("ip6-linklocal-")
    assert parts[4:6] == ["::1", "255.255.255.0"]
    assert parts[6].startswith("ip6-public-")
    assert parts[7] == "10:00:00"


def test_harvested_names_macs_users_and_emails(tmp_path: Path) -> None:
    h = Harvested(hostnames=("dhcp-192-168-0-66",), fqdns=("web7.corp.example",), users=("carol",))
    r = private(tmp_path, h)
    line = "WEB7.corp.example dhcp-192-168-0-66 /home/carol/x carol@corp.example 3C-22-FB-12-34-56 carol_backup"
    out = r.redact_text(line, "x")
    for gone in ("web7", "WEB7", "dhcp-192", "carol", "3C-22", "corp.example"):
        assert gone not in out, (gone, out)
    assert set(r.hits()["x"]) == {"fqdn", "host", "user", "email", "mac"}


def test_facts_are_walked_and_typed_identifiers_pseudonymised(tmp_path: Path) -> None:
    r = private(tmp_path)
    s = facts_pb2.Snapshot(bundle_id="ab" * 16, kind="one-shot")
    s.host.hostname = "plainname"
    s.host.kernel = "6.1.0.18"
    nic = s.network.interfaces.add(name="eth0", mac="02:fc:00:00:00:01")
    nic.addresses.add(family="ipv4", address="192.0.2.2", netmask="255.255.255.0")
    s.processes.top_cpu.add(name="psql", username="dbuser", cmdline="psql postgres://u:PgPass99@db/x")
    s.network_depth.dns_servers.append("10.9.8.7")
    s.plugin_facts["pgsql"] = '{"password": "PluginPw1", "host": "10.9.8.6"}'
    redact_message(s, r)
    text = str(s)
    for gone in ("plainname", "02:fc", "192.0.2.2", "dbuser", "PgPass99", "10.9.8.7", "PluginPw1", "10.9.8.6"):
        assert gone not in text, gone
    assert s.host.kernel == "6.1.0.18" and s.bundle_id == "ab" * 16
    assert s.network.interfaces[0].addresses[0].netmask == "255.255.255.0"


def test_standard_leaves_identifiers_alone() -> None:
    r = Redactor(get_profile("standard"), harvested=Harvested(hostnames=("web7",)))
    assert r.redact_text("web7 10.1.2.3 a@b.example", "x") == "web7 10.1.2.3 a@b.example"


def test_spellings_share_a_token_and_unmask_gives_each_back(tmp_path: Path) -> None:
    h = Harvested(hostnames=("web7",))
    r = private(tmp_path, h)
    text = "web7 WEB7 fe80::d8a5:90ff:fef5:7fff FE80:0000:0000:0000:D8A5:90FF:FEF5:7FFF fe80::1%eth0 3C-22-FB-12-34-56"
    out = r.redact_text(text, "x")
    a, b, c, d, e, f = out.split()
    assert b.startswith(a + "-w") and d.startswith(c + "-w")  # one address, one name: the same first part
    assert e.startswith("ip6-linklocal-") and "-w" in e and f.startswith("mac-") and "-w" in f
    assert r.pseudo is not None
    r.pseudo.flush()
    assert unmask_text(out, load_mapping(tmp_path)) == (text, 6, 0)
