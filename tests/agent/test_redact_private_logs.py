"""``private`` on real-shaped syslog: foreign host and user names are pseudonymised by
position and shape, consistently in text and JSON-lines members, and unmask gives back
exactly what was written."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from agent.redact import Pseudonymizer, Redactor, get_profile, load_mapping, load_or_create_redact_key, unmask_text
from agent.redact.identifiers import SYSTEM_USERS, learnable

LOGHUB = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "loghub"


def private(home: Path) -> Redactor:
    key = load_or_create_redact_key(home)
    assert key is not None
    return Redactor(get_profile("private"), pseudonymizer=Pseudonymizer(key, home=home))


def corpus(name: str) -> list[str]:
    path = LOGHUB / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared loghub corpus is read at run time, never copied)")
    lines = path.read_text("utf-8", "replace").splitlines()
    if name.startswith("Thunderbird"):
        # loghub prefixes each syslog line with its own columns (alert tag, epoch, date,
        # node); what a machine writes starts at the syslog timestamp.
        lines = [x.split(" ", 4)[4] for x in lines if x.count(" ") >= 4]
    return lines


def _redact_lines(r: Redactor, lines: list[str], artifact: str) -> list[str]:
    out = io.BytesIO()
    r.redact_stream(io.BytesIO("".join(x + "\n" for x in lines).encode()), out, artifact)
    return out.getvalue().decode().splitlines()


_HEAD = re.compile(r"^(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d) (\S+) ")
_USERS = re.compile(r"(?:for user|of user|User|Invalid user|for) ([A-Za-z_][\w.-]*[\w-])\b")


@pytest.mark.parametrize("name", ["Mac_2k.log", "Thunderbird_2k.log"])
def test_foreign_hosts_and_users_pseudonymised_and_unmasked_exactly(tmp_path: Path, name: str) -> None:
    lines = corpus(name)
    r = private(tmp_path)
    redacted = _redact_lines(r, lines, f"files/{name}")
    hosts = {part for x in lines if (m := _HEAD.match(x)) for part in re.split(r"[/@]", m.group(1))}
    hosts = {h for h in hosts if not h.startswith("#") and h != "-"}
    assert len(hosts) >= 5, hosts
    text = "\n".join(redacted)
    # Every host field is a token; a name once seen there is a token wherever it comes
    # after (one pass over a stream cannot know a name before it first sees it).
    seen: set[str] = set()
    for x, y in zip(lines, redacted, strict=True):
        m = _HEAD.match(x)
        if m is not None and not m.group(1).startswith("#"):
            assert _HEAD.match(y) and _HEAD.match(y).group(1) != m.group(1)  # type: ignore[union-attr]
            seen.update(h for h in re.split(r"[/@]", m.group(1)) if learnable(h))
        for host in seen:
            assert re.search(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", y, re.IGNORECASE) is None, (host, y)
    assert seen == {h for h in hosts if learnable(h)} and len(seen) >= 5
    users = {m.group(1) for x in lines for m in _USERS.finditer(x) if "user" in m.group(0).lower()}
    for user in users - SYSTEM_USERS:
        assert re.search(rf"user {re.escape(user)}\b", text) is None, user
    assert r.pseudo is not None
    r.pseudo.flush()
    mapping = load_mapping(tmp_path)
    for x, y in zip(lines, redacted, strict=True):
        if "[REDACTED:" in y:
            continue  # a secret marker is not reversible, by design
        assert unmask_text(y, mapping)[0] == x


def test_the_same_name_is_one_token_in_files_and_logs_and_later_runs(tmp_path: Path) -> None:
    lines = [
        "Nov 23 10:00:01 db02 sshd[812]: Accepted publickey for alice from 10.0.0.7 port 50022 ssh2",
        "Nov 23 10:00:02 db02 sudo:    alice : TTY=pts/0 ; USER=root ; COMMAND=/bin/ls",
        "Nov 23 10:00:03 mail01 postfix/smtpd[90]: connect from relay.partner.example[203.0.113.9]",
        "Nov 23 10:00:04 db02 sshd[813]: Invalid user guest7 from 198.51.100.4 port 4711",
        "Nov 23 10:00:05 db02 systemd-logind[1]: New session 3 of user alice.",
        "Nov 23 10:00:06 db02 pam_unix(cron:session): session opened for user bob by (uid=0)",
        "Nov 23 10:00:07 db02 app[5]: mail to carol@partner.example and dave@mail01 (user=erin)",
        "Nov 23 10:00:08 db02 dpkg[9]: status installed libfoo:amd64 1.7.4.4-2 from v1.2.3.4",
        "Nov 23 10:00:09 db02 mDNSResponder[91]: awdl0 (FE80:0000:0000:0000:D8A5:90FF:FEF5:7FFF)",
    ]
    r = private(tmp_path)
    text_out = _redact_lines(r, lines, "files/syslog")
    records = [json.dumps({"ts": None, "src": "syslog", "msg": x.split(" ", 3)[3]}) for x in lines]
    json_out = [json.loads(x)["msg"] for x in _redact_lines(r, records, "logs/syslog.jsonl")]
    assert [x.split(" ", 3)[3] for x in text_out] == json_out  # one token per name in both
    joined = "\n".join(text_out)
    for gone in ("db02", "mail01", "alice", "guest7", "bob", "carol", "dave", "erin", "relay.partner", "FE80"):
        assert gone not in joined, gone
    assert "1.7.4.4-2" in joined and "v1.2.3.4" in joined  # versions are not addresses
    assert "for user root" not in joined and "USER=root" in joined  # system accounts stay
    assert r.pseudo is not None
    r.pseudo.flush()
    again = private(tmp_path)
    assert _redact_lines(again, lines, "files/other") == text_out
    mapping = load_mapping(tmp_path)
    assert [unmask_text(x, mapping)[0] for x in text_out] == lines
