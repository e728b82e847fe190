"""Which specs this machine runs: shipped ones by name, others only signed by a trusted key.

The customer's ``policy.json`` (in the agent's home) lists the keys trusted to sign
specs and which specs may run live::

    "spec_signers": ["sha256:<hex>"],             // fingerprints of support's signing keys
    "live_specs": ["postgresql", "sha256:<hex>/*"] // by name, or every spec of one signer

``casefile collect --spec`` takes the name of a spec shipped with the agent
(``agent/specs/builtin``: the same trust as the agent's own code) or a signed spec
file, verified against ``spec_signers``; a plain YAML file is refused as unsigned. A
live request's spec must also be listed in ``live_specs`` (``live_denial``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from agent.scopes import check_spec_signers, spec_allowed_live
from agent.specs.envelope import SignedSpec, SpecRefused, verify_spec
from agent.specs.model import Spec
from agent.specs.parse import parse_spec
from agent.specs.yamlsafe import SpecError

__all__ = [
    "BUILTIN_SIGNER",
    "LoadedSpec",
    "builtin_names",
    "check_signers",
    "live_denial",
    "load_builtin",
    "load_spec_arg",
    "trusted_signers",
]

BUILTIN_SIGNER = "builtin"


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    signer: str  # a key fingerprint, or "builtin"
    sha256: str
    source: str  # the file or "builtin:<name>"
    signed: SignedSpec | None = None

    def origin(self) -> dict[str, str]:
        return {"signer": self.signer, "sha256": self.sha256, "source": self.source}


def check_signers(value: object, where: str) -> tuple[str, ...]:
    """``spec_signers`` of a policy: a list of ``sha256:<hex>`` fingerprints."""
    found = check_spec_signers(value)
    if found is None:
        raise SpecError(
            f"{where}: spec_signers must be a list of key fingerprints sha256:<64 hex>; got {str(value)[:80]}"
        )
    return found


def live_denial(signed: SignedSpec, live_specs: tuple[str, ...]) -> str | None:
    """Why a verified spec may not run live here, or None."""
    return spec_allowed_live(signed.spec.name, signed.signer, live_specs)


def trusted_signers(home: Path) -> tuple[str, ...]:
    """The ``spec_signers`` of ``<home>/policy.json``; none when there is no policy."""
    path = home / "policy.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        raise SpecError(f"policy {path}: cannot read the trusted spec signers: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"policy {path}: expected a JSON object")
    return check_signers(data.get("spec_signers", []), f"policy {path}")


def builtin_names() -> tuple[str, ...]:
    folder = resources.files("agent.specs") / "builtin"
    return tuple(sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")))


def load_builtin(name: str) -> LoadedSpec:
    import hashlib

    if name not in builtin_names():
        raise SpecError(f"no built-in spec {name!r}; built-in: {', '.join(builtin_names())}")
    text = (resources.files("agent.specs") / "builtin" / f"{name}.yaml").read_text("utf-8")
    spec = parse_spec(text, where=f"built-in spec {name}")
    return LoadedSpec(spec, BUILTIN_SIGNER, hashlib.sha256(text.encode()).hexdigest(), f"builtin:{name}")


def load_spec_arg(arg: str, home: Path) -> LoadedSpec:
    """``--spec FILE|NAME``: a signed spec file (checked against the policy's signers) or a
    built-in name; SpecError (SpecRefused for signature problems) with the reason."""
    path = Path(arg)
    if not path.exists():
        if "/" in arg or arg.endswith((".json", ".yaml", ".yml")):
            raise SpecError(f"--spec {arg}: no such file")
        return load_builtin(arg)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"--spec {arg}: {exc.strerror or exc}") from None
    try:
        signed = verify_spec(data, trusted_signers(home), where=str(path))
    except SpecRefused as exc:
        if exc.reason != "untrusted-signer":
            raise
        hint = f"; to trust it, add its fingerprint to spec_signers in {home / 'policy.json'}"
        raise SpecRefused(exc.reason, str(exc).split(": ", 1)[1] + hint) from None
    return LoadedSpec(signed.spec, signed.signer, signed.spec_sha256, str(path), signed)
