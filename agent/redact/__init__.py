"""Privacy: secret scrubbing, pseudonymisation, the leak gate and redaction profiles.

Redaction is a phase of the framework (``agent.oneshot`` runs every artifact and every
string fact through a ``Redactor`` before the bundle writer sees it); collectors never
call it themselves.
"""

from __future__ import annotations

from agent.redact.errors import LeakError, RedactionError
from agent.redact.facts import FACTS_ARTIFACT, redact_message
from agent.redact.harvest import Harvested, harvest_host
from agent.redact.leakgate import LeakGate, LeakReport
from agent.redact.pipeline import Redactor
from agent.redact.profiles import PROFILES, Profile, get_profile
from agent.redact.pseudonym import (
    KEY_NAME,
    MAP_NAME,
    Pseudonymizer,
    load_mapping,
    load_or_create_redact_key,
    unmask_text,
)
from agent.redact.secrets import RULESET_VERSION, SECRET_RULES, SecretRule

__all__ = [
    "FACTS_ARTIFACT",
    "KEY_NAME",
    "MAP_NAME",
    "PROFILES",
    "RULESET_VERSION",
    "SECRET_RULES",
    "Harvested",
    "LeakError",
    "LeakGate",
    "LeakReport",
    "Profile",
    "Pseudonymizer",
    "RedactionError",
    "Redactor",
    "SecretRule",
    "get_profile",
    "harvest_host",
    "load_mapping",
    "load_or_create_redact_key",
    "redact_message",
    "unmask_text",
]
