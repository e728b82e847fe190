"""The collector's age identity (collector.services.sealed.CollectorRecipient): made once,
owner-only on disk, stable, and the one that opens what is sealed to its recipient."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyrage
import pytest

from collector.services.sealed import CollectorRecipient


def test_made_on_first_use_owner_only_and_stable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = CollectorRecipient(data)
    assert keys.recipient(create=False) is None and not keys.path.exists()  # asking does not make one
    public = keys.recipient()
    assert public is not None and public.startswith("age1")
    assert stat.S_IMODE(os.stat(keys.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(keys.path).st_mode) == 0o600
    assert not list(keys.folder.glob(".*partial"))
    # Another process (a new object) reads the same identity back.
    assert CollectorRecipient(data).recipient(create=False) == public
    secret = keys.path.read_text("ascii")
    assert "AGE-SECRET-KEY-1" in secret and public in secret
    sealed = pyrage.encrypt(b"for the collector", [pyrage.x25519.Recipient.from_str(public)])
    assert pyrage.decrypt(sealed, [CollectorRecipient(data).identity()]) == b"for the collector"


def test_a_damaged_identity_file_is_said_so(tmp_path: Path) -> None:
    keys = CollectorRecipient(tmp_path)
    keys.folder.mkdir(mode=0o700)
    keys.path.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(ValueError, match="not an age X25519 identity"):
        keys.recipient()
