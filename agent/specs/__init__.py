"""Collection specs: what support asks a machine for, declared in YAML and signed.

A spec (``model.py``, parsed by ``parse.py`` through the guarded YAML loader in
``yamlsafe.py``) lists files, product logs, commands, extra redaction patterns and
analysis rules. Support signs it (``envelope.py``, the bundles' Ed25519 format); the
agent verifies it against the signers it trusts, turns it into one collector
(``runner.py``) and the analysis turns its rules into findings
(``agent.analysis.rules.specs``). See docs/specs.md.
"""

from __future__ import annotations

from agent.specs.envelope import SignedSpec, SpecRefused, sign_spec, verify_spec
from agent.specs.model import CommandItem, FileItem, LogItem, Parameter, RedactItem, RuleItem, Spec
from agent.specs.parse import parse_spec
from agent.specs.yamlsafe import SpecError

__all__ = [
    "CommandItem",
    "FileItem",
    "LogItem",
    "Parameter",
    "RedactItem",
    "RuleItem",
    "SignedSpec",
    "Spec",
    "SpecError",
    "SpecRefused",
    "parse_spec",
    "sign_spec",
    "verify_spec",
]
