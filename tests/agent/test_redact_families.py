"""Secret families: a positive and a negative sample per family, checksums, secrets at any
place in any quoting (hypothesis), and no hit at all on real, secret-free logs."""

from __future__ import annotations

import base64
import io
import json
import lzma
import shutil
import string
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.redact import SECRET_RULES, LeakError, LeakGate, Redactor, get_profile
from agent.redact.secrets.financial import iban_valid, luhn_valid
from tests.agent.secret_samples import BARE, NEGATIVES, POSITIVES, Part, Positive, card_number, iban, join, tok

ROOT = Path(__file__).resolve().parents[2]
LOGHUB = ROOT.parent / "shared" / "corpus" / "loghub"
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
B32 = string.ascii_uppercase + "234567"


def standard() -> Redactor:
    return Redactor(get_profile("standard"))


def private() -> Redactor:
    return Redactor(get_profile("private"), key=b"k" * 32)


def _record(text: str) -> bytes:
    """The text as the logs collector writes a record of it (``logs/*.jsonl``)."""
    obj = {"ts": "2026-12-07T10:00:01.000000Z", "src": "syslog", "sev": "info", "msg": text}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def both_paths(text: str, make: Callable[[], Redactor] = standard) -> tuple[str, str]:
    """The text redacted as a string and as a stream (whose fast path reads only lines
    holding a hint), so a rule whose hints miss its own secret fails here."""
    as_text = make().redact_text(text, "files/t")
    out = io.BytesIO()
    make().redact_stream(io.BytesIO(text.encode()), out, "files/s")
    return as_text, out.getvalue().decode()


def log_path(text: str, make: Callable[[], Redactor] = standard) -> tuple[bytes, str]:
    """The text as a log record through the log path: (the record out, its message)."""
    out = io.BytesIO()
    make().redact_stream(io.BytesIO(_record(text)), out, "logs/syslog.jsonl")
    msg = json.loads(out.getvalue())["msg"]  # every record stays valid JSON
    assert isinstance(msg, str)
    return out.getvalue(), msg


# -- one positive and one negative per family ---------------------------------------------


@pytest.mark.parametrize("p", POSITIVES, ids=[f"{p.family}-{p.rule}-{i}" for i, p in enumerate(POSITIVES)])
def test_positive_sample_is_redacted(p: Positive) -> None:
    """Through --add-file (text and stream) and the log path, in standard and private."""
    for make in (standard, private):
        for out in (*both_paths(p.text, make), log_path(p.text, make)[1]):
            assert p.secret not in out, (p.rule, make.__name__, out)
            assert f"[REDACTED:{p.rule}]" in out, (p.rule, make.__name__, out)
    # The gate's verdicts on the same sample: the raw member fails, the redacted one passes.
    for member, raw, redacted in (("files/s", p.text.encode(), both_paths(p.text)[1].encode()),
                                  ("logs/syslog.jsonl", _record(p.text), log_path(p.text)[0])):
        assert _gate(member, redacted)["result"] == "pass", (p.rule, member)
        with pytest.raises(LeakError):
            _gate(member, raw)


def _gate(member: str, data: bytes) -> dict[str, object]:
    gate = LeakGate(None)
    gate.scan_bytes(member, data)
    return gate.check(allow_leaks=False)


@pytest.mark.parametrize("text", [t for _, t in NEGATIVES], ids=[f"{f}-{i}" for i, (f, _) in enumerate(NEGATIVES)])
def test_negative_sample_is_untouched(text: str) -> None:
    assert both_paths(text) == (text, text)
    assert log_path(text)[0] == _record(text)  # the very bytes
    for out in (*both_paths(text, private), log_path(text, private)[1]):
        assert "[REDACTED:" not in out  # private may pseudonymise names, never redact


def test_every_family_has_both_and_every_rule_a_positive() -> None:
    assert {f for f, _ in NEGATIVES} == {p.family for p in POSITIVES}
    assert {r.name for r in SECRET_RULES} <= {p.rule for p in POSITIVES}


# -- the two false positives of issue 14 -----------------------------------------------------


def test_dpkg_package_architecture_is_not_a_secret() -> None:
    r = standard()
    for line in (
        "2026-12-07 02:08:56 status installed libsecret-common:amd64 0.20.5-3\n",
        "Unpacking libsecret-1-0:amd64 (0.20.5-3) ...\n",
        "Selecting previously unselected package gir1.2-secret-1:amd64.\n",
        "2026-12-07 02:09:00 configure passwd:amd64 1:4.13+dfsg1-1 <none>\n",
    ):
        assert r.redact_text(line, "dpkg.log") == line
    assert r.hits() == {}
    # The same key with a real separator is still a secret.
    assert standard().redact_text("libsecret-token: abc123", "x") == "libsecret-token: [REDACTED:kv-secret]"


def test_basic_auth_stops_at_a_written_out_crlf() -> None:
    cred = base64.b64encode(b"alice:" + b"x" * 12).decode()
    for text in (
        f"send: b'POST / HTTP/1.1\\r\\nAuthorization: Basic {cred}\\r\\nContent-Length: 12\\r\\n'",
        f'{{"headers": "Authorization: Basic {cred}\\r\\nContent-Length: 12"}}',
    ):
        for out in both_paths(text):
            assert cred not in out
            assert "Content-Length: 12" in out, out


# -- checksums ---------------------------------------------------------------------------


def test_a_grouped_number_running_into_the_next_one_is_still_found() -> None:
    visa = card_number("4", 16, 7)
    spaced = " ".join(visa[i : i + 4] for i in range(0, 16, 4))
    es = iban("ES", "21000418450200051332")  # 24 characters: six full groups, then "SEPA" looks like a 7th
    es_spaced = " ".join(es[i : i + 4] for i in range(0, len(es), 4))
    assert standard().redact_text(f"card={spaced} 7 items", "t") == "card=[REDACTED:payment-card] 7 items"
    assert standard().redact_text(f"iban {es_spaced} SEPA", "t") == "iban [REDACTED:iban] SEPA"

ISSUERS = [("4", 16), ("4", 13), ("51", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("65", 19),
           ("3530", 16), ("36", 14), ("62", 17)]  # fmt: skip


@given(issuer=st.sampled_from(ISSUERS), seed=st.integers(0, 10**6), at=st.integers(0, 18), delta=st.integers(1, 9))
@settings(max_examples=300, deadline=None)
def test_card_numbers_are_luhn_checked(issuer: tuple[str, int], seed: int, at: int, delta: int) -> None:
    prefix, length = issuer
    number = card_number(prefix, length, seed)
    assert luhn_valid(number)
    out = standard().redact_text(f"card {number} declined", "t")
    assert number not in out and "[REDACTED:payment-card]" in out
    # Luhn catches every single-digit change: a number one digit off is not a card.
    i = len(prefix) + at % (length - len(prefix))
    typo = number[:i] + str((int(number[i]) + delta) % 10) + number[i + 1 :]
    assert not luhn_valid(typo)
    assert standard().redact_text(f"card {typo} declined", "t") == f"card {typo} declined"


@given(
    country=st.sampled_from([("DE", 18), ("FR", 23), ("GB", 18), ("NL", 14), ("IT", 23), ("ES", 20), ("CH", 17)]),
    seed=st.integers(0, 10**6),
    at=st.integers(4, 40),
    delta=st.integers(1, 9),
)
@settings(max_examples=300, deadline=None)
def test_ibans_are_mod97_checked(country: tuple[str, int], seed: int, at: int, delta: int) -> None:
    code, n = country
    number = iban(code, tok(string.digits, n, seed))
    assert iban_valid(number)
    out = standard().redact_text(f"iban: {number}", "t")
    assert number not in out and "[REDACTED:iban]" in out
    i = 4 + at % (len(number) - 4)
    typo = number[:i] + str((int(number[i]) + delta) % 10) + number[i + 1 :]
    assert not iban_valid(typo)  # ISO 7064 mod 97-10 catches every single substitution
    assert standard().redact_text(f"iban: {typo}", "t") == f"iban: {typo}"


# -- a secret of any family at any place, any quoting ---------------------------------------


def _s(alphabet: str, n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=n, max_size=n)


def _token(lead: tuple[str, ...], alphabet: str, n: int) -> st.SearchStrategy[tuple[str, str]]:
    return st.builds(lambda body: (join(*lead, body), body), _s(alphabet, n))


TOKENS: dict[str, st.SearchStrategy[tuple[str, str]]] = {
    "aws": _token(("AK", "IA"), B32, 16),
    "github": _token(("gh", "p_"), ALNUM, 36),
    "gitlab": _token(("gl", "pat-"), ALNUM + "_-", 20),
    "npm": _token(("np", "m_"), ALNUM, 36),
    "pypi": _token(("pypi-", "AgEIcHlwaS5vcmc"), ALNUM + "_-", 70),
    "rubygems": _token(("ruby", "gems_"), HEX, 48),
    "docker-hub": _token(("dckr", "_pat_"), ALNUM + "_-", 27),
    "digitalocean": _token(("dop", "_v1_"), HEX, 64),
    "databricks": _token(("da", "pi"), HEX, 32),
    "vault": _token(("hv", "s."), ALNUM + "_-", 95),
    "gcp-oauth": _token(("GOC", "SPX-"), ALNUM + "_-", 28),
    "stripe": _token(("sk", "_live_"), ALNUM, 24),
    "shopify": _token(("sh", "pat_"), HEX, 32),
    "openai": _token(("sk-", "proj-"), ALNUM + "_-", 120),
    "huggingface": _token(("h", "f_"), string.ascii_letters, 34),
    "slack": st.builds(
        lambda a, b, c: (join("xo", "xb-", a, "-", b, "-", c), c),
        _s("123456789", 12),
        _s("123456789", 13),
        _s(ALNUM, 24),
    ),
    "jwt": st.builds(
        lambda a, b, c: (join("ey", "J", a, ".ey", "J", b, ".", c), b + "." + c),
        _s(ALNUM, 20),
        _s(ALNUM, 40),
        _s(ALNUM, 43),
    ),
    "azure-ad": st.builds(lambda a, b: (join(a, "8Q", "~", b), b), _s(ALNUM, 3), _s(ALNUM + "_~.-", 34)),
    "telegram": st.builds(lambda a, b: (join(a, ":A", "A", b), b), _s("123456789", 10), _s(ALNUM + "_-", 33)),
}
SECRET_KEYS = ["password", "DB_PASSWORD", "api_key", "client_secret", "auth_token", "apiToken", "private_key_id",
               "secretKey", "access_key", "passwd", "token", "spring.datasource.password", "X-Api-Key"]  # fmt: skip
SEPS = ["=", ": ", " = ", ":=", " => ", "="]
QUOTES = ["", '"', "'", '\\"']
KEYED = st.builds(
    lambda k, sep, q, v: (f"{q}{k}{q}{sep}{q}{v}{q}", v),
    st.sampled_from(SECRET_KEYS),
    st.sampled_from(SEPS),
    st.sampled_from(QUOTES),
    st.text(ALNUM + "!$%^*#~+", min_size=6, max_size=24).filter(lambda v: any(c in "!$%^*#~+" for c in v)),
)  # a symbol keeps the value from being one of the line's own words
URLS = st.builds(
    lambda scheme, user, pw: (f"{scheme}://{user}:{pw}@db.example.net:5432/app", pw),
    st.sampled_from(["postgres", "postgresql", "mysql", "mongodb+srv", "redis", "amqp", "https"]),
    st.text(string.ascii_lowercase, min_size=1, max_size=8),
    st.text(ALNUM + "!$*~", min_size=6, max_size=24).filter(lambda v: any(c in "!$*~" for c in v)),
)


def _card_in_context(issuer: tuple[str, int], seed: int, ctx: str, spaced: bool) -> tuple[str, str]:
    number = card_number(*issuer, seed)
    if spaced:
        number = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    return ctx + number, number


CARDS = st.builds(
    _card_in_context,
    st.sampled_from([i for i in ISSUERS if i[1] == 16]),
    st.integers(0, 10**6),
    st.sampled_from(["card=", "card ", '"pan": "', "payment with ", "credit card: "]),
    st.booleans(),
)
DOCKER = st.builds(
    lambda user, pw: (
        json.dumps({"auths": {"r.example.com": {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}}}),
        base64.b64encode(f"{user}:{pw}".encode()).decode(),
    ),
    st.text(string.ascii_lowercase, min_size=1, max_size=8),
    st.text(ALNUM, min_size=8, max_size=20),
)
PEM = st.builds(
    lambda body: (f"-----BEGIN OPENSSH PRIVATE KEY-----\\n{body}\\n-----END OPENSSH PRIVATE KEY-----", body),
    _s(ALNUM + "+/", 70),
)


def _bare(parts: tuple[Part, ...], lead: int) -> st.SearchStrategy[tuple[str, str]]:
    """A token of a prefixed vendor family (secret_samples.BARE) with a random body."""
    drawn = [st.just(p) if isinstance(p, str) else _s(p[0], p[1]) for p in parts]
    return st.tuples(*drawn).map(lambda ps: (join(*ps), join(*ps)[lead:]))


BARE_TOKENS = {f"bare-{rule}-{i}": _bare(parts, lead) for i, (_, rule, parts, lead) in enumerate(BARE)}
FAMILIES = {**TOKENS, **BARE_TOKENS, "keyed": KEYED, "db-url": URLS, "card": CARDS, "docker-auth": DOCKER,
            "pem": PEM}

WORDS = st.sampled_from(
    [
     "Dec", "7", "02:09:39", "web01", "sshd[1201]:", "Accepted", "publickey", "for", "alice", "from", "192.0.2.7",
     "port", "22", "ssh2", "systemd[1]:", "Started", "Session", "42", "kernel:", "eth0:", "link", "up", "CRON[99]:",
     "(root)", "CMD", "status=0/SUCCESS", "failed", "password", "authentication", "token", "bucket", "key", "GET",
     "/index.html", "HTTP/1.1", "200", "level=info", "msg=\"request", "done\"", "user_id=42", "{", "}", "->",
    ]
)  # fmt: skip
SEPARATORS = st.sampled_from([" ", "\t", " (", ' "', " '", " [", ", ", " <", " msg=", " \\n", "\\t"])


@given(kind=st.sampled_from(sorted(FAMILIES)), data=st.data(), words=st.lists(WORDS, max_size=20))
@settings(max_examples=3000, deadline=None)
def test_a_secret_anywhere_in_any_quoting_never_survives(kind: str, data: st.DataObject, words: list[str]) -> None:
    embedded, secret = data.draw(FAMILIES[kind])
    at = data.draw(st.integers(0, len(words)))
    line = " ".join(words[:at]) + data.draw(SEPARATORS) + embedded + data.draw(SEPARATORS) + " ".join(words[at:])
    if data.draw(st.booleans()):  # the whole line as a JSON string's content, as JSON logs carry it
        line = json.dumps(line)[1:-1]
    for out in both_paths(line):
        assert secret not in out, (kind, line, out)
        assert json.dumps(secret)[1:-1] not in out, (kind, line, out)
        assert "[REDACTED:" in out


@given(
    data=st.dictionaries(
        st.text(ALNUM + "._-", min_size=1, max_size=20),
        st.text(ALNUM + "+/=", min_size=4, max_size=40),
        min_size=1,
        max_size=6,
    ),
    escaped=st.booleans(),
    kind_first=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_every_value_of_a_one_line_json_kubernetes_secret_goes(
    data: dict[str, str], escaped: bool, kind_first: bool
) -> None:
    doc = {"kind": "Secret", "apiVersion": "v1", "data": data} if kind_first else {"data": data, "kind": "Secret"}
    line = json.dumps(doc, separators=(",", ":"))
    if escaped:
        line = json.dumps({"metadata": {"annotations": {"last-applied-configuration": line}}})
    out = json.loads(standard().redact_text(line, "t"))
    if escaped:
        out = json.loads(out["metadata"]["annotations"]["last-applied-configuration"])
    assert out["data"] == dict.fromkeys(data, "[REDACTED:k8s-secret]")


# -- no hit at all on real, secret-free logs -----------------------------------------------


def _real_logs() -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for path in [Path("/var/log/dpkg.log"), *sorted(Path("/var/log/apt").glob("*"))]:
        if path.is_file():
            raw = path.read_bytes()
            found.append((str(path), lzma.decompress(raw) if path.suffix == ".xz" else raw))
    for name, cmd in (("journal", ["journalctl", "-n", "20000", "-o", "cat", "--no-pager"]), ("kernel", ["dmesg"])):
        if shutil.which(cmd[0]):
            run = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
            if run.returncode == 0 and run.stdout.strip():
                found.append((name, run.stdout))
    found.extend((str(p), p.read_bytes()) for p in sorted(LOGHUB.glob("*.log")))
    return found


def test_real_logs_have_no_hit() -> None:
    logs = _real_logs()
    if not logs:
        pytest.skip("no dpkg/apt log, journal, kernel log or ../shared/corpus/loghub on this machine")
    r = standard()
    for name, raw in logs:
        r.redact_stream(io.BytesIO(raw), io.BytesIO(), name)
        text = raw.decode("utf-8", "replace")
        lines = text.splitlines()
        for line in lines[:20000]:  # the text path too, line by line
            r.redact_text(line, name + " (text)")
        # and the log path: each line a record of logs/*.jsonl
        records = b"".join(_record(line) for line in lines[:200000])
        r.redact_stream(io.BytesIO(records), io.BytesIO(), f"logs/{Path(name).name}.jsonl")
    assert r.hits() == {}


@pytest.mark.parametrize("make", [standard, private])
def test_a_held_yaml_block_that_was_no_secret_still_goes_through_the_rules(make: Callable[[], Redactor]) -> None:
    """``data:`` before ``kind:`` is held until ``kind`` decides; a ConfigMap's lines then
    go through every rule, even when the line that released them holds no hint."""
    pw = tok(ALNUM, 14, 7)
    doc = f"apiVersion: v1\ndata:\n  mode: fast\n  note: password={pw}\nkind: ConfigMap\nmetadata:\n  name: c\n"
    for out in both_paths(doc, make):
        assert pw not in out
        assert "  mode: fast\n" in out and "[REDACTED:kv-secret]" in out and "k8s-secret" not in out
