"""Secret rules: always applied, in every profile.

Each rule has cheap substring *hints*; its regex runs only on a line that holds one of
them, so a plain syslog line costs a handful of ``in`` tests (Datadog's scrubber does
the same, gitleaks calls them keywords). Hints marked case-insensitive are tested on the
lower-cased line.

A replacement keeps the shape readable — ``AKIA…[REDACTED:aws-access-key]``,
``password=[REDACTED:kv-secret]`` — so an engineer still sees *what* was there.

The families, by module (docs/redaction.md maps family -> rule -> test):

- ``tokens``: vendor tokens by their own shape (cloud, VCS and CI, package registries,
  messaging, payments, AI, developer SaaS, age keys) and JWTs, caught bare;
- ``shapes``: credentials by the shape of their file (docker config.json, npm ``_auth``,
  one-line JSON Kubernetes Secrets, .pgpass lines, .netrc, base64-wrapped keys and JWTs);
  multi-line YAML Kubernetes Secrets are followed by ``agent/redact/yamlsecret.py``;
- ``financial``: payment cards (Luhn) and IBANs (mod 97);
- ``generic``: HTTP auth headers, URL user-info (database URLs, .git-credentials),
  command-line passwords, ``key = value`` with a secret-like key in any quoting, XML.

Order matters: specific rules run first; the generic ones refuse values that already
hold a marker, so one secret is counted once.
"""

from __future__ import annotations

from agent.redact.secrets._base import SecretRule, marker
from agent.redact.secrets.financial import FINANCIAL_RULES
from agent.redact.secrets.generic import GENERIC_RULES, LATE_RULES
from agent.redact.secrets.shapes import PRIVATE_KEY, SHAPE_RULES
from agent.redact.secrets.tokens import NAMED_RULES, VENDOR_RULES

__all__ = ["RULESET_VERSION", "SECRET_RULES", "SecretRule", "marker"]

RULESET_VERSION = "casefile-secrets/3"

SECRET_RULES: tuple[SecretRule, ...] = (
    PRIVATE_KEY,  # first: a key's body may hold anything the other rules would take apart
    *NAMED_RULES,
    *VENDOR_RULES,
    *SHAPE_RULES,
    *GENERIC_RULES,
    *FINANCIAL_RULES,
    *LATE_RULES,
)
