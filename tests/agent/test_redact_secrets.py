"""Secret rules: the corpus, random secrets at random places, and plain lines untouched."""

from __future__ import annotations

import io
import string
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.redact import Redactor, get_profile

CORPUS = Path(__file__).parent.parent / "fixtures" / "privacy"
B32 = string.ascii_uppercase + "234567"
ALNUM = string.ascii_letters + string.digits


def standard() -> Redactor:
    return Redactor(get_profile("standard"))


def _s(alphabet: str, n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=n, max_size=n)


# One strategy per kind: (the whole text to embed, the part that must not survive).
SECRETS: dict[str, st.SearchStrategy[tuple[str, str]]] = {
    "aws-access-key": st.builds(lambda s: ("AKIA" + s, "AKIA" + s), _s(B32, 16)),
    "aws-secret-key": st.builds(lambda s: (f"aws_secret_access_key={s}", s), _s(ALNUM + "/+", 40)),
    "github": st.builds(lambda s: ("ghp_" + s, s), _s(ALNUM, 36)),
    "github-fine": st.builds(lambda s: ("github_pat_" + s, s), _s(ALNUM + "_", 82)),
    "gitlab": st.builds(lambda s: ("glpat-" + s, s), _s(ALNUM + "_-", 20)),
    "slack": st.builds(
        lambda a, b, c: (f"xoxb-{a}-{b}-{c}", c), _s(string.digits, 12), _s(string.digits, 13), _s(ALNUM, 24)
    ),
    "stripe": st.builds(lambda m, s: (f"sk_{m}_{s}", s), st.sampled_from(["live", "test"]), _s(ALNUM, 24)),
    "gcp": st.builds(lambda s: ("AIza" + s, s), _s(ALNUM + "_-", 35)),
    "azure": st.builds(lambda s: (f"AccountName=x;AccountKey={s}==;", s), _s(ALNUM + "+/", 86)),
    "jwt": st.builds(
        lambda a, b, c: (f"eyJ{a}.eyJ{b}.{c}", f"{a}.eyJ{b}.{c}"), _s(ALNUM, 20), _s(ALNUM, 30), _s(ALNUM, 43)
    ),
    "bearer": st.builds(lambda s: (f"Authorization: Bearer {s}", s), _s(ALNUM + "._-", 32)),
    "url": st.builds(
        lambda u, p: (f"postgres://{u}:{p}@db.example.com/x", p), _s(string.ascii_lowercase, 5), _s(ALNUM, 16)
    ),
    "kv": st.builds(
        lambda k, sep, v: (f"{k}{sep}{v}", v),
        st.sampled_from(["password", "DB_PASSWORD", "api_key", "client_secret", "auth_token", "apiToken"]),
        st.sampled_from(["=", ": ", " = ", "="]),
        _s(ALNUM + "!$%^*", 16),
    ),
}

WORDS = st.sampled_from(
    [
     "Nov", "23", "10:00:01", "web01", "sshd[1201]:", "Accepted", "publickey", "for", "alice", "from",
     "192.0.2.7", "port", "22", "ssh2", "systemd[1]:", "Started", "Session", "42", "of", "user", "bob.",
     "kernel:", "eth0:", "link", "up", "1000", "Mbps", "full", "duplex", "CRON[99]:", "(root)", "CMD",
     "(run-parts", "/etc/cron.hourly)", "pid=1234", "uid=0", "status=0/SUCCESS", "failed", "password",
     "authentication", "key", "exchange", "done", "token", "bucket", "refilled", "connection", "closed", "by",
     "peer", "/var/log/syslog", "GET", "/index.html", "HTTP/1.1", "200", "512", "disk", "sda1", "is", "91%",
     "full", "secret-less",
    ]
)
SEPARATORS = st.sampled_from([" ", "\t", " (", ' "', " '", " [", ", ", " <"])


@given(kind=st.sampled_from(sorted(SECRETS)), data=st.data(), words=st.lists(WORDS, min_size=0, max_size=20))
@settings(max_examples=400, deadline=None)
def test_random_secret_at_random_place_never_survives(kind: str, data: st.DataObject, words: list[str]) -> None:
    embedded, value = data.draw(SECRETS[kind])
    at = data.draw(st.integers(0, len(words)))
    sep = data.draw(SEPARATORS)
    line = " ".join(words[:at]) + sep + embedded + " " + " ".join(words[at:])
    out = standard().redact_text(line, "t")
    assert value not in out, (kind, line, out)
    assert "[REDACTED:" in out


@given(words=st.lists(WORDS, min_size=1, max_size=30))
@settings(max_examples=300, deadline=None)
def test_plain_lines_come_out_unchanged(words: list[str]) -> None:
    line = " ".join(words) + "\n"
    r = standard()
    assert r.redact_text(line, "t") == line
    out = io.BytesIO()
    r.redact_stream(io.BytesIO(line.encode() * 3), out, "s")
    assert out.getvalue() == line.encode() * 3
    assert r.hits() == {}


def test_corpus_standard_scrubs_every_secret_and_keeps_shape() -> None:
    secrets = [s for s in (CORPUS / "secrets.txt").read_text().splitlines() if s]
    r = standard()
    for path in sorted(CORPUS.iterdir()):
        if path.suffix in (".txt", ".md"):
            continue
        out = io.BytesIO()
        with path.open("rb") as src:
            r.redact_stream(src, out, path.name)
        text = out.getvalue().decode()
        for s in secrets:
            assert s not in text, (path.name, s)
    assert "AKIA…[REDACTED:aws-access-key]" in standard().redact_text("AKIAUJZDEGXDNCF32EPF", "x")
    hits = r.hits()
    assert hits["app.env"]["aws-access-key"] == 1
    assert hits["id_rsa.pem"] == {"private-key": 1}


def test_key_block_across_lines_and_stream_blocks() -> None:
    body = "".join("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2\n" for _ in range(40))
    text = "before\n-----BEGIN EC PRIVATE KEY-----\n" + body + "-----END EC PRIVATE KEY-----\nafter 1.2.3.4\n"
    out = io.BytesIO()
    r = standard()
    r.redact_stream(io.BytesIO(text.encode() * 2000), out, "k")  # several 1 MiB blocks
    got = out.getvalue().decode()
    assert "QUJDREVG" not in got
    assert got.count("after 1.2.3.4\n") == 2000
    assert r.hits()["k"] == {"private-key": 2000}


def test_values_already_redacted_are_not_counted_twice() -> None:
    r = standard()
    out = r.redact_text("aws_access_key_id=AKIAUJZDEGXDNCF32EPF", "x")
    assert out == "aws_access_key_id=AKIA…[REDACTED:aws-access-key]"
    assert r.hits() == {"x": {"aws-access-key": 1}}


def test_secret_pair_behind_another_colon_pair_is_caught() -> None:
    # "kernel: password=x" first matches as key "kernel" with value "password=x"; the
    # secret inside that value must still be found, and so must one whose own separator
    # is ": " ("kernel: password: x", where that value is just "password:"). Both found
    # by hypothesis.
    r = Redactor(get_profile("standard"))
    for line in (
        "Nov 23 kernel: password=0000000000000000 ",
        "Nov kernel: password: 0000000000000000 ",
        "a: b: c: api_key = 0000000000000000",
        "app: db: token=abc123",
        'msg: "secret=s3cr3t" end',
    ):
        out = r.redact_text(line, "t")
        assert "[REDACTED:kv-secret]" in out, out
        assert not any(v in out for v in ("0000000000000000", "abc123", "s3cr3t")), out
    assert r.redact_text("status: ok=1 err=0", "t") == "status: ok=1 err=0"
