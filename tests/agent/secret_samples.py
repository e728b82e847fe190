"""Positive and negative samples per secret family, in the shapes logs and config files
really have. Every token is *built* here from its documented format (prefix, alphabet,
length) with a seeded generator, so the repository holds no string that looks like a
live credential for a scanner to trip on; none is a real secret.

``POSITIVES``: (family, rule, text, secret) — after redaction ``secret`` must be gone and
``[REDACTED:rule]`` present. ``NEGATIVES``: (family, text) — text that looks alike and
must come out unchanged. docs/redaction.md maps family -> rule -> these samples.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass

__all__ = ["BARE", "NEGATIVES", "POSITIVES", "Part", "Positive", "bare_token", "card_number", "iban", "tok"]

UPPER = string.ascii_uppercase
LOWER = string.ascii_lowercase
DIGITS = string.digits
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
B32 = UPPER + "234567"


def tok(alphabet: str, n: int, seed: int) -> str:
    """``n`` characters of ``alphabet``, the same for the same seed."""
    rnd = random.Random(seed)
    return "".join(rnd.choice(alphabet) for _ in range(n))


def join(*parts: str) -> str:
    """Concatenate at run time, so no token-shaped literal sits in the source."""
    return "".join(parts)


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card_number(prefix: str, length: int, seed: int) -> str:
    """A Luhn-valid number of ``length`` digits starting with ``prefix`` (a test PAN)."""
    body = prefix + tok(DIGITS, length - len(prefix) - 1, seed)
    return body + _luhn_digit(body)


def iban(country: str, bban: str) -> str:
    """An IBAN with correct mod-97 check digits for ``country`` + ``bban``."""
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


@dataclass(frozen=True)
class Positive:
    family: str
    rule: str
    text: str
    secret: str


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


# Tokens of the prefixed vendor families, caught bare anywhere in a line: (family, rule,
# parts, kept lead). A part is a literal or (alphabet, length), drawn with ``tok``; the
# formats are the vendors' documented ones (gitleaks' default rules as the checklist).
A = ALNUM
Part = str | tuple[str, int]
BARE: list[tuple[str, str, tuple[Part, ...], int]] = [
    ("cloud", "cloud-token", ("A3", "-", (UPPER + DIGITS, 6), "-", (UPPER + DIGITS, 11), "-", (UPPER + DIGITS, 5),
                              "-", (UPPER + DIGITS, 5), "-", (UPPER + DIGITS, 5)), 3),  # 1Password secret key
    ("cloud", "cloud-token", ("AB", "SK", (A + "+/", 150)), 4),  # Amazon Bedrock
    ("cloud", "cloud-token", ("hv", "b.", (A + "_-", 150)), 4),  # Vault batch token
    ("cloud", "cloud-token", ((LOWER + DIGITS, 14), ".atlas", "v1.", (A + "_=-", 65)), 0),  # Terraform Cloud
    ("cloud", "cloud-token", ("HRKU", "-AA", (A + "_-", 58)), 7),  # Heroku v2
    ("cloud", "cloud-token", ("v1.", "0-", (HEX, 24), "-", (HEX, 146)), 5),  # Cloudflare Origin CA
    ("cloud", "cloud-token", ("fo", "1_", (A + "_-", 43)), 4),  # Fly.io
    ("cloud", "cloud-token", ("fm", "2_", (A + "+/", 120)), 5),  # Fly.io macaroon
    ("cloud", "cloud-token", ("sha256", "~", (A + "_-", 43)), 7),  # OpenShift
    ("cloud", "cloud-token", ("tk-", "us-", (A + "_-", 48)), 6),  # Scalingo
    ("cloud", "cloud-token", ("dp.", "pt.", (A, 43)), 6),  # Doppler
    ("cloud", "cloud-token", ("4b", "1d", (A, 38)), 4),  # ClickHouse Cloud
    ("cloud", "cloud-token", ("sc_", (LOWER + DIGITS, 10), ".", (LOWER + DIGITS, 5), ".ac", "c_",
                              (LOWER + DIGITS + "-", 20), ".", (A + "+/_=-", 40)), 0),  # Authress
    ("vcs-ci", "vcs-ci-token", ("sntr", "yu_", (HEX, 64)), 7),  # Sentry user token
    ("vcs-ci", "vcs-ci-token", ("pa", "t.", (A + "_-", 22), ".", (A, 24), ".", (A, 20)), 4),  # Harness
    ("vcs-ci", "vcs-ci-token", ("pn", "u_", (A, 36)), 4),  # Prefect
    ("vcs-ci", "vcs-ci-token", ("pu", "l-", (HEX, 40)), 4),  # Pulumi
    ("vcs-ci", "vcs-ci-token", ("lin_", "api_", (A, 40)), 8),  # Linear
    ("vcs-ci", "vcs-ci-token", ("s-s4", "t2ud-", (HEX, 64)), 9),  # 42 intra
    ("vcs-ci", "gitlab-token", ("gl", "ft-", (A + "_-", 20)), 6),  # GitLab feed token
    ("vcs-ci", "gitlab-token", ("gl", "agent-", (A + "_-", 50)), 6),  # GitLab agent token
    ("registry", "registry-token", ("AK", "Cp", (A, 69)), 4),  # Artifactory API key
    ("registry", "registry-token", ("cmV", "md", (A, 59)), 5),  # Artifactory reference token
    ("registry", "registry-token", ("CLOJARS", "_", (A, 60)), 8),  # Clojars
    ("messaging", "messaging-token", ("xkey", "sib-", (HEX, 64), "-", (A, 16)), 8),  # Brevo
    ("messaging", "messaging-token", ("S", "K", (HEX, 32)), 2),  # Twilio API key
    ("payment", "payment-key", ("EA", "AA", (A + "_-", 40)), 4),  # Square
    ("payment", "payment-key", ("sq0", "atp-", (A + "_-", 22)), 4),  # Square
    ("payment", "payment-key", ("EZ", "AK", (A, 54)), 4),  # EasyPost
    ("payment", "payment-key", ("FLWSECK", "_TEST-", ("abcdefgh" + DIGITS, 32), "-X"), 8),  # Flutterwave
    ("ai", "ai-api-key", ("api_", "org_", (string.ascii_letters, 34)), 8),  # Hugging Face organisation
    ("ai", "ai-api-key", ("pp", "lx-", (A, 48)), 5),  # Perplexity
    ("saas", "saas-token", ("dt0", "c01.", (A, 24), ".", (A, 64)), 7),  # Dynatrace
    ("saas", "saas-token", ("NR", "JS-", (HEX, 19)), 5),  # New Relic
    ("saas", "saas-token", ("NR", "II-", (A + "-", 32)), 5),
    ("saas", "saas-token", ("NR", "AK-", (A, 27)), 5),
    ("saas", "saas-token", ("gl", "c_", (A + "+/", 40)), 4),  # Grafana Cloud
    ("saas", "saas-token", ("gl", "sa_", (A, 32), "_", (HEX, 8)), 5),  # Grafana service account
    ("saas", "saas-token", ("PM", "AK-", (HEX, 24), "-", (HEX, 34)), 5),  # Postman
    ("saas", "saas-token", ("nt", "n_", (DIGITS, 11), (A, 35)), 4),  # Notion
    ("saas", "saas-token", ("tf", "p_", (A + "_.=-", 58), (A, 1)), 4),  # Typeform
    ("saas", "saas-token", ("rd", "me_", (LOWER + DIGITS, 70)), 5),  # ReadMe
    ("saas", "saas-token", ("ic", "o-", (A, 32)), 4),  # Infracost
    ("saas", "saas-token", ((A, 6), "_", (A, 29), "_m", "mk"), 0),  # MaxMind
    ("saas", "saas-token", ("fio", "-u-", (A + "_=-", 63), (A, 1)), 6),  # Frame.io
    ("saas", "saas-token", ("p8", "e-", (A, 32)), 4),  # Adobe
    ("saas", "saas-token", ("sm_", "pat_", (A, 16)), 7),  # SettleMint
    ("saas", "saas-token", ("pscale", "_tkn_", (A + "_=.-", 39), (A, 1)), 7),  # PlanetScale
    ("saas", "saas-token", ("EA", "AM", (A, 120)), 4),  # Facebook page token
]


def bare_token(parts: tuple[Part, ...], seed: int) -> str:
    return join(*(p if isinstance(p, str) else tok(p[0], p[1], seed * 31 + i) for i, p in enumerate(parts)))


def _positives() -> list[Positive]:
    out: list[Positive] = []

    def add(family: str, rule: str, text: str, secret: str) -> None:
        out.append(Positive(family, rule, text, secret))

    for i, (family, rule, parts, lead) in enumerate(BARE):
        token = bare_token(parts, 1000 + i)
        add(family, rule, f"deploy step 3: using {token} for this run", token[lead:])

    # -- cloud providers ---------------------------------------------------------------
    akid = join("AK", "IA", tok(B32, 16, 1))
    add("cloud", "aws-access-key", f"export AWS_ACCESS_KEY_ID={akid}", akid[4:])
    sak = tok(ALNUM + "/+", 40, 2)
    add("cloud", "aws-secret-key", f'aws_secret_access_key = "{sak}"', sak)
    gcp = join("AI", "za", tok(ALNUM + "_-", 35, 3))
    add("cloud", "gcp-api-key", f"GET /maps/api/geocode/json?address=x&key={gcp} 200", gcp[4:])
    acc = tok(ALNUM + "+/", 86, 4) + "=="
    add("cloud", "azure-key", f"DefaultEndpointsProtocol=https;AccountName=logs;AccountKey={acc};", acc)
    do = join("dop", "_v1_", tok(HEX, 64, 5))
    add("cloud", "cloud-token", f"DIGITALOCEAN_ACCESS_TOKEN {do}", do[7:])
    ali = join("LT", "AI", tok(ALNUM, 20, 6))
    add("cloud", "cloud-token", f"aliyun configure --access-key-id {ali}", ali[4:])
    dapi = join("da", "pi", tok(HEX, 32, 7))
    add("cloud", "cloud-token", f'{{"host": "https://x.cloud.databricks.com", "token": "{dapi}"}}', dapi[4:])
    vault = join("hv", "s.", tok(ALNUM + "_-", 90, 8))
    add("cloud", "cloud-token", f"vault login {vault}", vault[4:])
    aad = tok(ALNUM, 3, 9) + "8" + join("Q", "~") + tok(ALNUM + "_~.-", 34, 10)
    add("cloud", "cloud-token", f"AZURE_CLIENT_SECRET={aad}", aad[6:])
    gocs = join("GOC", "SPX-", tok(ALNUM + "_-", 28, 11))
    add("cloud", "cloud-token", f'"client_secret":"{gocs}"', gocs[7:])

    # -- VCS and CI ----------------------------------------------------------------------
    ghp = join("gh", "p_", tok(ALNUM, 36, 12))
    add("vcs-ci", "github-token", f"git clone https://{ghp}@github.com/acme/app.git", ghp[4:])
    fine = join("github", "_pat_", tok(ALNUM + "_", 82, 13))
    add("vcs-ci", "github-token", f"GH_TOKEN={fine}", fine[11:])
    glpat = join("gl", "pat-", tok(ALNUM + "_-", 20, 14))
    add("vcs-ci", "gitlab-token", f"curl -H 'PRIVATE-TOKEN: {glpat}' https://gitlab.example.com/api/v4", glpat[6:])
    atl = join("ATA", "TT3", tok(ALNUM + "_-", 180, 15))
    add("vcs-ci", "vcs-ci-token", f"jira: using api token {atl} for user ci", atl[6:])

    # -- package registries ------------------------------------------------------------
    npm = join("np", "m_", tok(ALNUM, 36, 16))
    add("registry", "registry-token", f"//registry.npmjs.org/:_authToken={npm}", npm[4:])
    add("registry", "registry-token", f"npm notice using token {npm}", npm[4:])
    pypi = join("pypi-", "AgEIcHlwaS5vcmc", tok(ALNUM + "_-", 120, 17))
    add("registry", "registry-token", f"twine upload -u __token__ -p {pypi} dist/*", pypi[20:])
    gems = join("ruby", "gems_", tok(HEX, 48, 18))
    add("registry", "registry-token", f"---\n:rubygems_api_key: {gems}", gems[9:])
    dckr = join("dckr", "_pat_", tok(ALNUM + "_-", 27, 19))
    add("registry", "registry-token", f"docker login -u ci --password-stdin <<< {dckr}", dckr[9:])
    userpass = "ci-bot:" + tok(ALNUM, 18, 20)
    auth = _b64(userpass)
    cfg = json.dumps({"auths": {"registry.example.com": {"auth": auth}}})
    add("registry", "registry-auth", cfg, auth)
    add("registry", "registry-auth", json.dumps({"msg": cfg}), auth)  # the JSON-escaped form
    add("registry", "registry-auth", f"_auth = {auth}", auth)
    dockerconfig = _b64(cfg)
    add("registry", "encoded-secret", f"  .dockerconfigjson: {dockerconfig}", dockerconfig)

    # -- messaging -----------------------------------------------------------------------
    xoxb = join("xo", "xb-", tok(DIGITS, 12, 21), "-", tok(DIGITS, 13, 22), "-", tok(ALNUM, 24, 23))
    add("messaging", "slack-token", f"slack: posting with {xoxb}", xoxb[5:])
    hook = tok(UPPER + DIGITS, 9, 24) + "/" + tok(UPPER + DIGITS, 11, 25) + "/" + tok(ALNUM, 24, 26)
    add("messaging", "slack-token", f"POST https://hooks.slack.com/services/{hook}", hook[5:])
    dis = tok(DIGITS, 18, 27) + "/" + tok(ALNUM + "_-", 68, 28)
    add("messaging", "messaging-token", f"webhook=https://discord.com/api/webhooks/{dis}", dis)
    tg = tok(DIGITS, 10, 29) + join(":A", "A") + tok(ALNUM + "_-", 33, 30)
    add("messaging", "messaging-token", f"GET https://api.telegram.org/bot{tg}/sendMessage", tg)
    sg = join("S", "G.", tok(ALNUM + "_-", 22, 31), ".", tok(ALNUM + "_-", 43, 32))
    add("messaging", "messaging-token", f"SENDGRID={sg}", sg[3:])

    # -- payments ------------------------------------------------------------------------
    sk = join("sk", "_live_", tok(ALNUM, 24, 33))
    add("payment", "stripe-key", f"stripe.api_key = '{sk}'", sk[8:])
    whsec = join("wh", "sec_", tok(ALNUM, 32, 34))
    add("payment", "stripe-key", f"STRIPE_WEBHOOK_SECRET={whsec}", whsec[6:])
    shp = join("sh", "pat_", tok(HEX, 32, 35))
    add("payment", "payment-key", f"X-Shopify-Access-Token: {shp}", shp[6:])
    visa = card_number("4", 16, 36)
    add("payment", "payment-card", f"payment declined card={visa} reason=insufficient_funds", visa)
    spaced = " ".join(visa[i : i + 4] for i in range(0, 16, 4))
    add("payment", "payment-card", f'{{"event":"charge.failed","card_number":"{spaced}"}}', spaced)
    amex = card_number("37", 15, 37)
    add("payment", "payment-card", f"checkout: pan {amex} exp 12/29", amex)
    de = iban("DE", tok(DIGITS, 18, 38))
    add("payment", "iban", f"sepa transfer to IBAN {de} queued", de)
    gb = iban("GB", "NWBK" + tok(DIGITS, 14, 39))
    gb_spaced = " ".join(gb[i : i + 4] for i in range(0, len(gb), 4))
    add("payment", "iban", f"payout account: {gb_spaced}", gb_spaced)

    # -- AI providers --------------------------------------------------------------------
    oai = join("sk-", "proj-", tok(ALNUM + "_-", 156, 40))
    add("ai", "ai-api-key", f"OPENAI_API_KEY={oai}", oai[3:])
    ant = join("sk-", "ant-api03-", tok(ALNUM + "_-", 93, 41), "AA")
    add("ai", "ai-api-key", f"anthropic: key {ant}", ant[7:])
    hf = join("h", "f_", tok(string.ascii_letters, 34, 42))
    add("ai", "ai-api-key", f"huggingface-cli login --token {hf}", hf[3:])

    # -- database URLs and client config files -----------------------------------------------
    pw = tok(ALNUM, 16, 43)
    add("database", "url-credentials", f"DATABASE_URL=postgres://app:{pw}@db.internal:5432/app", pw)
    add("database", "url-credentials", f"mongodb+srv://admin:{pw}@cluster0.example.net/?retryWrites=true", pw)
    add("client-config", "url-credentials", f"https://alice:{pw}@git.example.com", pw)  # .git-credentials
    add("client-config", "pgpass", f"db.internal:5432:app:app_user:{pw}", pw)
    add("client-config", "pgpass", f"*:*:*:replicator:{pw}\n", pw)
    add("client-config", "pgpass", f"# ~/.pgpass\npgbouncer.internal:6432:*:app:{pw}\n", pw)  # any port
    add("client-config", "pgpass", f"[fe80\\:\\:1]:15432:app:app:{pw}", pw)
    add("client-config", "netrc", f"machine api.example.com login alice password {pw}", pw)
    add("client-config", "netrc", f"    password {pw}\n", pw)
    add("client-config", "kv-secret", f"password = {pw}", pw)  # .my.cnf [client]
    add("client-config", "cli-secret", f"mysqldump -uroot -p{pw} --all-databases", pw)
    add("client-config", "cli-user-password", f"curl -u deploy:{pw} https://artifacts.example.com/x.tgz", pw)
    add("client-config", "kv-secret", f'<add key="ClearTextPassword" value="{pw}" />', pw)  # NuGet.Config

    jwt_b64 = _b64(join("ey", "J", tok(ALNUM, 30, 53), ".ey", "J", tok(ALNUM, 60, 54), ".", tok(ALNUM, 43, 55)))
    add("jwt", "encoded-secret", f"X-Session: {jwt_b64}", jwt_b64)

    # -- private keys --------------------------------------------------------------------
    body = tok(ALNUM + "+/", 64, 44)
    pem = f"-----BEGIN RSA PRIVATE KEY-----\\n{body}\\n-----END RSA PRIVATE KEY-----\\n"
    add("private-key", "private-key", f'{{"key": "{pem}"}}', body)
    b64pem = _b64(f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    add("private-key", "encoded-secret", f"  tls.key: {b64pem}", b64pem)
    age = join("AGE-SECRET", "-KEY-1", tok("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58, 45))
    add("private-key", "age-secret-key", f"# sops age key\n{age}", age[16:])

    # -- JWT -----------------------------------------------------------------------------
    jwt = join("ey", "J", tok(ALNUM, 30, 46), ".ey", "J", tok(ALNUM, 60, 47), ".", tok(ALNUM + "_-", 43, 48))
    add("jwt", "jwt", f"access_log: user=bob session {jwt} ok", jwt[3:])

    # -- Kubernetes Secrets and service-account JSON -----------------------------------------
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
              "data": {"username": _b64("app"), "host": _b64("db.internal"), "conn": _b64(pw)}}
    one_line = json.dumps(secret, separators=(",", ":"))
    add("kubernetes", "k8s-secret", one_line, _b64(pw))
    add("kubernetes", "k8s-secret", one_line, _b64("app"))
    add("kubernetes", "k8s-secret", json.dumps({"last-applied": one_line}), _b64(pw))  # escaped inside JSON
    add("kubernetes", "kv-secret", f"  password: {_b64(pw)}", _b64(pw))  # YAML data line
    # Multi-line YAML, as kubectl prints it (data before kind) and as people write it.
    kubectl = (f"apiVersion: v1\ndata:\n  conn: {_b64(pw)}\n  username: {_b64('app')}\nkind: Secret\n"
               "metadata:\n  name: db\n  namespace: prod\ntype: Opaque\n")
    add("kubernetes", "k8s-secret", kubectl, _b64(pw))
    add("kubernetes", "k8s-secret", kubectl, _b64("app"))
    written = (f"---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: app\nstringData:\n  config.ini: |\n"
               f"    user = app\n    conn = {pw}\n  api-url: https://api.example.com\n")
    add("kubernetes", "k8s-secret", written, pw)
    add("kubernetes", "k8s-secret", written, "api.example.com")
    listed = (f"apiVersion: v1\nitems:\n- apiVersion: v1\n  data:\n    tls.crt: {_b64('cert')}\n  kind: Secret\n"
              "- apiVersion: v1\n  data:\n    mode: fast\n  kind: ConfigMap\nkind: List\n")
    add("kubernetes", "k8s-secret", listed, _b64("cert"))
    key_id = tok(HEX, 40, 49)
    sa = json.dumps({"type": "service_account", "project_id": "p", "private_key_id": key_id,
                     "private_key": f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"})
    add("service-account", "kv-secret", sa, key_id)
    add("service-account", "private-key", sa, body)
    add("service-account", "kv-secret", json.dumps({"log": sa}), key_id)  # JSON-escaped

    # -- generic key = value, any quoting --------------------------------------------------
    v = tok(ALNUM + "!$%^*", 14, 50)
    for text in (f"client_secret={v}", f'"apiToken": "{v}"', f"'db_password' => '{v}'", f"API_KEY: {v}",
                 f"auth_token := {v}", f'{{\\"password\\": \\"{v}\\"}}', f"secret='{v}'", f"<password>{v}</password>"):
        add("generic", "xml-secret" if text.startswith("<") else "kv-secret", text, v)
    env = json.dumps([{"name": "DB_PASSWORD", "value": v}])
    add("generic", "kv-secret", env, v)

    # -- HTTP auth -----------------------------------------------------------------------
    basic = _b64("alice:" + pw)
    add("http-auth", "auth-header", f"'Authorization: Basic {basic}\\r\\nContent-Length: 12'", basic)
    bearer = tok(ALNUM + "._-", 40, 51)
    add("http-auth", "auth-header", f"Authorization: Bearer {bearer}", bearer)
    return out


def _negatives() -> list[tuple[str, str]]:
    visa = card_number("4", 16, 36)
    bad_luhn = visa[:-1] + str((int(visa[-1]) + 1) % 10)
    de = iban("DE", tok(DIGITS, 18, 38))
    bad_iban = de[:2] + f"{(int(de[2:4]) + 1) % 100:02d}" + de[4:]
    cert = _b64("-----BEGIN CERTIFICATE-----\nMIIB" + tok(ALNUM, 60, 52) + "\n-----END CERTIFICATE-----\n")
    return [
        ("cloud", "AKIA is the prefix of an access key id"),
        ("cloud", "Q~ marks a question in the forum export"),
        ("vcs-ci", "ghp_ tokens are revoked after 90 days"),
        ("registry", "npm_config_cache=/home/build/.npm npm_lifecycle_event=test"),
        ("registry", '{"auths": {"registry.example.com": {"auth": "none"}}}'),
        ("messaging", "xoxo from the team"),
        ("payment", f"payment order {bad_luhn} accepted"),
        ("payment", "card reader event at 1733539200123 ms"),
        ("payment", f"credit transfer {bad_iban} rejected: bad check digits"),
        ("payment", "account DE00 is not an iban"),
        ("database", "connecting to postgres://db.internal:5432/app as app"),
        ("client-config", "10:00:01 host:5432 took 3 ms"),
        ("client-config", "Dec  7 02:09:39 web01 sshd[1201]: Failed password for root from 192.0.2.7 port 22 ssh2"),
        ("client-config", "password authentication failed for user app"),
        ("client-config", "root:x:0:0:root:/root:/bin/bash"),  # /etc/passwd: port field "x"
        ("client-config", "fe80:1:2:3:4"),  # hex groups, not an entry
        ("client-config", "db.internal:70000:app:app:x"),  # no such port
        ("client-config", "2026-12-07 10:00:01 db:5432:app:user:closed connection"),  # inside a log line
        ("private-key", "-----BEGIN PUBLIC KEY-----"),
        ("private-key", f"  ca.crt: {cert}"),
        ("jwt", "header eyJhbGciOiJIUzI1NiJ9 only"),
        ("kubernetes", json.dumps({"kind": "ConfigMap", "data": {"mode": "fast"}}, separators=(",", ":"))),
        ("kubernetes", "apiVersion: v1\ndata:\n  mode: fast\n  user: app\nkind: ConfigMap\nmetadata:\n  name: c\n"),
        ("kubernetes", "kind: Secret\nmetadata:\n  name: x\n---\ndata:\n  mode: fast\nkind: ConfigMap\n"),
        ("saas", "NRJS- and glc_ are the New Relic and Grafana Cloud prefixes; SK1 is a part number"),
        ("saas", "sha256~ digest pinned; pat.local resolved; EAAA record"),
        ("generic", "2026-12-07 02:08:56 status installed libsecret-common:all 0.20.5-3"),
        ("generic", "Setting up libsecret-1-0:amd64 (0.20.5-3) ..."),
        ("generic", "Install: passwd:amd64 (1:4.13+dfsg1-1), gir1.2-secret-1:amd64 (0.20.5-3, automatic)"),
        ("generic", "W ActivityManager: Bad activity token: android.os.BinderProxy@2bd79ce"),
        ("generic", "V WindowManager: Skipping AppWindowToken{df0798e token=Token{78af589 ActivityRecord{3b04890}}}"),
        ("generic", "Priority: 20, Token: Token { kind: ContainerToken, service: 10.0.0.1:28345 }, ]"),
        ("generic", "at com.android.server.wm.AppWindowToken.destroySurfaces:374"),
        ("generic", "token bucket refilled; status: ok"),
        ("ai", "sk-learn 1.3 loaded; hf_hub cache at /var/cache/hf"),
        ("service-account", json.dumps({"type": "service_account", "project_id": "p", "client_id": "1234"})),
        ("http-auth", 'WWW-Authenticate: Basic realm="ops"; no bearer given'),
    ]


POSITIVES: list[Positive] = _positives()
NEGATIVES: list[tuple[str, str]] = _negatives()
