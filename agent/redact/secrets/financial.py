"""Payment card numbers and IBANs, checked by their own checksums.

A card number is 13 to 19 digits (bare, or in groups split by blanks or dashes) with an
issuer prefix in use (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro)
that passes Luhn; an IBAN is a registered country code, two check digits and the
country's length of letters and digits that passes ISO 7064 mod 97-10. Numbers that
merely look alike — order ids, epoch milliseconds, HDFS block ids — fail one of these
and stay.

Digits carry no literal to key on, so both rules run on lines that name a payment
(``card``, ``pan``, ``iban``, ``account``…; docs/redaction.md lists the words).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.redact.secrets._base import SecretRule, marker

__all__ = ["FINANCIAL_RULES", "iban_valid", "luhn_valid"]

_ISSUER = re.compile(r"4|5[1-5]|2[2-7]|3[47]|3[0689]|35(?:2[89]|[3-8]\d)|6(?:011|5|4[4-9]|2)|5[06-9]|6\d")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and _ISSUER.match(digits) is not None and luhn_valid(digits)


@dataclass(frozen=True)
class _GroupedRule(SecretRule):
    """A number written in groups may run into a following short number or word
    (``4111 … 1111 7``, ``GB29 … 19 EUR``): the match is tried whole, then with its last
    groups dropped one by one, so the number is found either way and nothing else goes."""

    valid: Callable[[str], bool] = lambda text: False

    def apply(self, line: str) -> tuple[str, int]:
        parts: list[str] = []
        at = n = 0
        for m in self.pattern.finditer(line):
            candidate = m.group(0)
            while candidate:
                if self.valid(candidate):
                    parts.append(line[at : m.start()] + marker(self.name))
                    at = m.start() + len(candidate)
                    n += 1
                    break
                cut = max(candidate.rfind(" "), candidate.rfind("-"))
                candidate = candidate[:cut] if cut > 0 else ""
        if not n:
            return line, 0
        parts.append(line[at:])
        return "".join(parts), n


# ISO 13616 registry: country -> IBAN length.
_IBAN_LENGTH = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def iban_valid(text: str) -> bool:
    iban = text.replace(" ", "").upper()
    if _IBAN_LENGTH.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


FINANCIAL_RULES: tuple[SecretRule, ...] = (
    _GroupedRule(
        "payment-card",
        ("card", "pan", "payment", "credit"),
        re.compile(
            r"(?<![\w.+/-])(?:\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"  # 4-4-4-4(-3)
            r"|\d{4}([ -])\d{6}\2\d{4,5}|\d{13,19})(?![\w-]|\.\d)"  # 4-6-5 (Amex, Diners) or bare
        ),
        lambda m: marker("payment-card"),
        fold=True,
        valid=_is_card,
    ),
    _GroupedRule(
        "iban",
        ("iban", "account", "credit"),
        re.compile(
            r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?![A-Za-z0-9])"
        ),
        lambda m: marker("iban"),
        fold=True,
        valid=iban_valid,
    ),
)
