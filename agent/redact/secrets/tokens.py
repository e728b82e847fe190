"""Vendor tokens recognised by their own shape: a fixed prefix, an alphabet, a length.

One rule per family (cloud, VCS and CI, package registries, messaging, payments, AI);
a family runs only the shapes whose own hint is in the line, and keeps each shape's
public prefix (``npm_…``) in the marker.
The shapes are written from the vendors' documented token formats, cross-checked with
gitleaks' default rule set (docs/redaction.md maps each shape to its test).

Every family of gitleaks' default rules whose tokens carry a distinctive prefix has a
shape here and is caught bare, anywhere in a line. Tokens that have no prefix of their
own (Datadog, Twilio auth tokens, Mailchimp…) are caught by the key they sit under
(``kv-secret``), as every scanner does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ahocorasick_rs import AhoCorasick

from agent.redact.secrets._base import SecretRule, keep_lead, value_group

__all__ = ["NAMED_RULES", "VENDOR_RULES"]

# A token starts at a non-word character or right after a JSON escape (``\nnpm_…``).
_START = r"(?:(?<![A-Za-z0-9_])|(?<=\\[nrt]))"
_END = r"(?![A-Za-z0-9_])"

# (hints the log path looks for, regex, characters of public prefix kept)
Shape = tuple[tuple[str, ...], str, int]


@dataclass(frozen=True)
class _Family(SecretRule):
    """A family of token shapes; only the shapes whose own hint is in the line run (one
    alternation of them all costs every alternative at every position of the line)."""

    shapes: tuple[tuple[tuple[str, ...], re.Pattern[str], int], ...] = ()
    gates: AhoCorasick | None = None  # every shape's gate hints, one pass per line
    gate_shape: tuple[int, ...] = ()  # gate hint index -> shape index

    def apply(self, line: str) -> tuple[str, int]:
        if self.gates is None:
            return line, 0
        total = 0
        woken = sorted({self.gate_shape[i] for i, _, _ in self.gates.find_matches_as_indexes(line, overlapping=True)})
        for k in woken:
            _, pattern, lead = self.shapes[k]
            line, n = pattern.subn(keep_lead(self.name, lead), line)
            total += n
        return line, total


_LITERAL = re.compile(r"[A-Za-z0-9_~-]+")


def _gate(hints: tuple[str, ...], rx: str) -> tuple[str, ...]:
    """What a line must hold for one shape to run: the literal its regex starts with
    (``eyJrIjoi`` rather than the shared hint ``eyJ``), else its hints."""
    m = _LITERAL.match(rx)
    return (m.group(0),) if m and len(m.group(0)) >= 3 else hints


def family(name: str, shapes: tuple[Shape, ...]) -> SecretRule:
    """One rule from a family's token shapes."""
    compiled = tuple(
        (_gate(hs, rx), re.compile(("" if rx.startswith("(?<=") else _START) + "(?:" + rx + ")" + _END), lead)
        for hs, rx, lead in shapes
    )
    hints = tuple(dict.fromkeys(h for hs, _, _ in shapes for h in hs))
    everything = re.compile("|".join(f"(?:{rx})" for _, rx, _ in shapes))
    gates = [(h, k) for k, (gate, _, _) in enumerate(compiled) for h in gate]
    return _Family(name, hints, everything, keep_lead(name, 0), shapes=compiled,
                   gates=AhoCorasick([h for h, _ in gates]), gate_shape=tuple(k for _, k in gates))


_HEX64 = "[a-f0-9]{64}"

# Each shape is led to by its own prefix as a hint: the log path finds all hints of all
# rules in one Aho-Corasick pass (scan.py), whose cost hardly grows with their number.
CLOUD: tuple[Shape, ...] = (
    (("LTAI",), r"LTAI[A-Za-z0-9]{12,20}", 4),  # Alibaba Cloud AccessKey ID
    (("_v1_",), r"do[opr]_v1_" + _HEX64, 7),  # DigitalOcean PAT / OAuth / refresh
    (("dapi",), r"dapi[a-f0-9]{32}(?:-\d)?", 4),  # Databricks PAT
    (("hvs.",), r"hvs\.[A-Za-z0-9_-]{20,300}", 4),  # HashiCorp Vault service token
    (("eyJ",), r"eyJrIjoi[A-Za-z0-9]{50,400}={0,3}", 8),  # Grafana API key (base64 JSON)
    (("Q~",), r"[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}", 0),  # Azure AD client secret
    (("GOCSPX-",), r"GOCSPX-[A-Za-z0-9_-]{28}", 7),  # Google OAuth client secret
    (("eyJ",), r"ops_eyJ[A-Za-z0-9+/]{250,}={0,3}", 4),  # 1Password service account
    (("A3-",), r"A3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}", 3),
    (("ABSK",), r"ABSK[A-Za-z0-9+/]{109,269}={0,2}", 4),  # Amazon Bedrock API key (long-lived)
    (("bedrock-api-key-",), r"bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29t[A-Za-z0-9+/=%_-]{20,}", 16),
    (("hvb.",), r"hvb\.[A-Za-z0-9_-]{138,300}", 4),  # HashiCorp Vault batch token
    ((".atlasv1.",), r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}", 0),  # Terraform Cloud API token
    (("HRKU-AA",), r"HRKU-AA[A-Za-z0-9_-]{58}", 7),  # Heroku API key (v2)
    (("v1.0-",), r"v1\.0-[a-f0-9]{24}-[a-f0-9]{146}", 5),  # Cloudflare Origin CA key
    (("fo1_",), r"fo1_[A-Za-z0-9_-]{43}", 4),  # Fly.io
    (("fm1a_", "fm1r_", "fm2_"), r"(?:fm1[ar]|fm2)_[A-Za-z0-9+/]{100,}={0,3}", 5),  # Fly.io macaroons
    (("sha256~",), r"sha256~[A-Za-z0-9_-]{43}", 7),  # OpenShift user token
    (("tk-us-",), r"tk-us-[A-Za-z0-9_-]{48}", 6),  # Scalingo
    (("dp.pt.",), r"dp\.pt\.[A-Za-z0-9]{43}", 6),  # Doppler
    (("4b1d",), r"4b1d[A-Za-z0-9]{38}", 4),  # ClickHouse Cloud API secret
    ((".acc_", ".acc-"), r"(?:sc|ext|scauth|authress)_[A-Za-z0-9]{5,30}\.[A-Za-z0-9]{4,6}\.acc[_-][A-Za-z0-9-]{10,32}"
     r"\.[A-Za-z0-9+/_=-]{30,120}", 0),  # Authress service client key
)

VCS_CI: tuple[Shape, ...] = (
    (("ATATT3",), r"ATATT3[A-Za-z0-9_=-]{100,300}", 6),  # Atlassian API token
    (("eyJ",), r"sntrys_eyJ[A-Za-z0-9+/=_]{50,400}", 7),  # Sentry org token
    (("sntryu_",), r"sntryu_[a-f0-9]{64}", 7),  # Sentry user token
    (("pat.", "sat."), r"(?:pat|sat)\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{20}", 4),  # Harness
    (("pnu_",), r"pnu_[A-Za-z0-9]{36}", 4),  # Prefect
    (("pul-",), r"pul-[a-f0-9]{40}", 4),  # Pulumi
    (("lin_api_",), r"lin_api_[A-Za-z0-9]{40}", 8),  # Linear
    (("s-s4t2",), r"s-s4t2(?:ud|af)-[a-f0-9]{64}", 9),  # 42 intra client secret
)

REGISTRY: tuple[Shape, ...] = (
    (("npm_",), r"npm_[A-Za-z0-9]{36}", 4),  # npm access token
    (("pypi-",), r"pypi-AgE[A-Za-z0-9_-]{50,}", 5),  # PyPI / TestPyPI upload token (macaroon)
    (("rubygems_",), r"rubygems_[a-f0-9]{48}", 9),  # RubyGems
    (("dckr_",), r"dckr_(?:pat|oat)_[A-Za-z0-9_-]{20,40}", 9),  # Docker Hub access token
    (("AKCp",), r"AKCp[A-Za-z0-9]{69}", 4),  # JFrog Artifactory API key
    (("cmVmd",), r"cmVmd[A-Za-z0-9]{59}", 5),  # JFrog Artifactory reference token
    (("CLOJARS_",), r"CLOJARS_[A-Za-z0-9]{60}", 8),  # Clojars
)

MESSAGING: tuple[Shape, ...] = (
    (("webhook",), r"(?<=/api/webhooks/)\d{17,20}/[A-Za-z0-9_-]{60,68}", 0),  # Discord webhook
    (("webhook",), r"(?<=webhookb2/)[0-9a-f-]{36}@[0-9a-f-]{36}/IncomingWebhook/[0-9a-f]{32}/[0-9a-f-]{36}"
     r"(?:/[A-Za-z0-9_-]+)?", 0),  # Microsoft Teams incoming webhook
    ((":AA",), r"\d{8,10}:AA[A-Za-z0-9_-]{33}", 0),  # Telegram bot token
    ((":AA",), r"(?<=/bot)\d{8,10}:AA[A-Za-z0-9_-]{33}", 0),  # the same in an API URL
    (("SG.",), r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}", 3),  # SendGrid
    (("xkeysib-",), r"xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}", 8),  # Brevo (Sendinblue)
    (("SK",), r"SK[0-9a-fA-F]{32}", 2),  # Twilio API key
)

PAYMENT: tuple[Shape, ...] = (
    (("shp",), r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}", 6),  # Shopify
    (("_live_", "_test_"), r"duffel_(?:test|live)_[A-Za-z0-9_=-]{43}", 12),  # Duffel
    (("_live_", "_test_"), r"shippo_(?:live|test)_[a-fA-F0-9]{40}", 12),  # Shippo
    (("EAAA", "sq0atp-"), r"(?:EAAA|sq0atp-)[A-Za-z0-9_-]{22,60}", 4),  # Square
    (("EZAK", "EZTK"), r"EZ[AT]K[A-Za-z0-9]{54}", 4),  # EasyPost
    (("FLWSECK",), r"FLWSECK(?:_TEST)?-[a-hA-H0-9]{32}-X", 8),  # Flutterwave secret key
)

AI: tuple[Shape, ...] = (
    (("sk-",), r"sk-ant-(?:api03|admin01)-[A-Za-z0-9_-]{93}AA", 7),  # Anthropic
    (("sk-",), r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,250}|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}", 3),
    (("hf_",), r"hf_[A-Za-z]{34}", 3),  # Hugging Face
    (("api_org_",), r"api_org_[A-Za-z]{34}", 8),  # Hugging Face organisation
    (("pplx-",), r"pplx-[A-Za-z0-9]{48}", 5),  # Perplexity
)

# Developer and observability services.
SAAS: tuple[Shape, ...] = (
    (("dt0c01.",), r"dt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}", 7),  # Dynatrace
    (("NRJS-",), r"NRJS-[a-f0-9]{19}", 5),  # New Relic browser
    (("NRII-",), r"NRII-[A-Za-z0-9-]{32}", 5),  # New Relic insert key
    (("NRAK-",), r"NRAK-[A-Za-z0-9]{27}", 5),  # New Relic user key
    (("glc_",), r"glc_[A-Za-z0-9+/]{32,400}={0,3}", 4),  # Grafana Cloud
    (("glsa_",), r"glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}", 5),  # Grafana service account
    (("PMAK-",), r"PMAK-[A-Fa-f0-9]{24}-[A-Fa-f0-9]{34}", 5),  # Postman
    (("ntn_",), r"ntn_[0-9]{11}[A-Za-z0-9]{35}", 4),  # Notion
    (("tfp_",), r"tfp_[A-Za-z0-9_.=-]{59}", 4),  # Typeform
    (("rdme_",), r"rdme_[a-z0-9]{70}", 5),  # ReadMe
    (("ico-",), r"ico-[A-Za-z0-9]{32}", 4),  # Infracost
    (("_mmk",), r"[A-Za-z0-9]{6}_[A-Za-z0-9]{29}_mmk", 0),  # MaxMind license key
    (("fio-u-",), r"fio-u-[A-Za-z0-9_=-]{64}", 6),  # Frame.io
    (("p8e-",), r"p8e-[A-Za-z0-9]{32}", 4),  # Adobe client secret
    (("sm_aat_", "sm_pat_", "sm_sat_"), r"sm_[aps]at_[A-Za-z0-9]{16}", 7),  # SettleMint
    (("pscale_",), r"pscale_(?:tkn|oauth|pw)_[A-Za-z0-9_=.-]{32,64}", 7),  # PlanetScale
    (("EAAM", "EAAC"), r"EAA[MC][A-Za-z0-9]{100,}", 4),  # Facebook page access token
)

VENDOR_RULES: tuple[SecretRule, ...] = (
    family("cloud-token", CLOUD),
    family("vcs-ci-token", VCS_CI),
    family("registry-token", REGISTRY),
    family("messaging-token", MESSAGING),
    family("payment-key", PAYMENT),
    family("ai-api-key", AI),
    family("saas-token", SAAS),
    # age identities (the key of age/sops encryption), Bech32.
    SecretRule(
        "age-secret-key",
        ("secret",),
        re.compile(r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}"),
        keep_lead("age-secret-key", 15),
        fold=True,
    ),
)

# The first rules of the set; their names are what earlier bundles' manifests counted.
NAMED_RULES: tuple[SecretRule, ...] = (
    SecretRule(
        "aws-access-key",
        ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        re.compile(r"(?<![A-Z0-9])(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}(?![A-Z0-9])"),
        keep_lead("aws-access-key", 4),
    ),
    SecretRule(
        "aws-secret-key",
        ("secret",),
        re.compile(
            r"(?i)(?:aws)?_?secret_?(?:access)?_?key\\*[\"']?\s*[:=]\s*\\*[\"']?"
            r"(?P<val>(?!\[REDACTED)[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
        ),
        value_group("aws-secret-key"),
        fold=True,
    ),
    SecretRule(
        "github-token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(_START + r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
        keep_lead("github-token", 4),
    ),
    SecretRule(
        "gitlab-token",
        ("glpat-", "glptt-", "gldt-", "glrt-", "glcbt-", "glft-", "glimt-", "glagent-", "gloas-", "glsoat-",
         "glffct-", "GR1348941", "_gitlab_session="),
        re.compile(
            r"(?:(?<![A-Za-z0-9_-])|(?<=\\[nrt]))(?:gl(?:pat|ptt|dt|rt|cbt|ft|imt|agent|oas|soat|ffct)-[A-Za-z0-9_.-]{20,}"
            r"|GR1348941[A-Za-z0-9_-]{20,})|(?<=_gitlab_session=)[0-9a-z]{32}"
        ),
        keep_lead("gitlab-token", 6),
    ),
    SecretRule(
        "slack-token",
        ("xox", "xapp-", "hooks.slack.com/"),
        re.compile(
            r"(?:xox[abposre]-[A-Za-z0-9-]{10,}|xoxe\.xox[bp]-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Za-z0-9-]{10,}"
            r"|(?:(?<=hooks\.slack\.com/services/)|(?<=hooks\.slack\.com/workflows/)|(?<=hooks\.slack\.com/triggers/))"
            r"[A-Za-z0-9/_+-]{20,})"
        ),
        keep_lead("slack-token", 5),
    ),
    SecretRule(
        "stripe-key",
        ("_live_", "_test_", "k_prod_", "whsec_"),
        re.compile(r"(?:(?<![A-Za-z0-9])|(?<=\\[nrt]))(?:[sr]k_(?:live|test|prod)_[A-Za-z0-9]{10,255}|whsec_[A-Za-z0-9]{24,})"),
        keep_lead("stripe-key", 8),
    ),
    SecretRule(
        "gcp-api-key",
        ("AIza",),
        re.compile(r"(?:(?<![A-Za-z0-9_-])|(?<=\\[nrt]))AIza[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])"),
        keep_lead("gcp-api-key", 4),
    ),
    SecretRule(
        "azure-key",
        ("account", "accesskey", "sig="),
        re.compile(
            r"(?i)(?:AccountKey|SharedAccessKey|(?<=[?&])sig)=(?P<val>(?!\[REDACTED)[A-Za-z0-9%+/]{16,}(?:={0,2}|(?:%3D){0,2}))"
        ),
        value_group("azure-key"),
        fold=True,
    ),
    SecretRule(
        "jwt",
        ("eyJ",),
        re.compile(r"(?:(?<![A-Za-z0-9_-])|(?<=\\[nrt]))eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}={0,2}"),
        keep_lead("jwt", 3),
    ),
)
