"""The key a bundle's courier proves itself with when it has none of its own.

``casefile upload BUNDLE --token <case token>`` may run on a machine that never made a
bundle (a technician's laptop carrying a customer's bundle to the collector). The
upload still needs a proof of key possession, but making a key there would leave an
identity behind as a side effect. So with no key in the home the proof is signed with
a key derived from the case token: nothing is written, the same token gives the same
key on every run (an interrupted upload resumes as the same uploader), and it holds
no power beyond the token itself, which every upload under it presents anyway.
The bundle is verified against its own signer, whatever key delivers it.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.keys import SigningKey

__all__ = ["courier_key"]

_CONTEXT = b"casefile-courier-key-v1\n"


def courier_key(case_token: str) -> SigningKey:
    """The Ed25519 key derived from ``case_token`` (never stored)."""
    seed = hashlib.sha256(_CONTEXT + case_token.encode("utf-8")).digest()
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))
