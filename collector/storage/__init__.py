"""The collector's storage: metadata (SQLite or PostgreSQL) and bundle blobs.

``Store`` holds tokens, agents, bundles, hosts and the audit log; ``BlobStore``
holds bundle files by SHA-256 and stages resumable uploads.
"""

from __future__ import annotations

from collector.storage.blobs import DEFAULT_SYNC_EVERY, BlobStore, StagedUpload
from collector.storage.cursors import MAX_PAGE_SIZE
from collector.storage.errors import (
    AuthError,
    Conflict,
    InvalidArgument,
    NotFound,
    SchemaError,
    StoreError,
)
from collector.storage.live import FINAL_STATES, LIVE_STATES, LiveRequestRecord
from collector.storage.metadata import Store
from collector.storage.migrations import LATEST_VERSION
from collector.storage.schema import AgentRecord, AuditRecord, BundleRecord, HostRecord
from collector.storage.tokens import KINDS, ROLES, TokenRecord

__all__ = [
    "DEFAULT_SYNC_EVERY",
    "FINAL_STATES",
    "KINDS",
    "LATEST_VERSION",
    "LIVE_STATES",
    "MAX_PAGE_SIZE",
    "ROLES",
    "AgentRecord",
    "AuditRecord",
    "AuthError",
    "BlobStore",
    "BundleRecord",
    "Conflict",
    "HostRecord",
    "InvalidArgument",
    "LiveRequestRecord",
    "NotFound",
    "SchemaError",
    "StagedUpload",
    "Store",
    "StoreError",
    "TokenRecord",
]
