"""The collector's storage: metadata (SQLite or PostgreSQL) and bundle blobs.

``Store`` holds tokens, agents, bundles, hosts and the audit log; ``BlobStore``
holds bundle files by SHA-256 and stages resumable uploads; ``S3BlobStore`` keeps the
same staging and publishes committed blobs to S3-compatible storage. Both are
``BlobBackend``s; ``open_blob_backend`` picks one from a blob URL.
"""

from __future__ import annotations

from collector.storage.blobs import DEFAULT_SYNC_EVERY, BlobBackend, BlobStore, StagedUpload
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
from collector.storage.s3 import S3BlobStore, S3Location, open_blob_backend, parse_blob_url
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
    "BlobBackend",
    "BlobStore",
    "BundleRecord",
    "Conflict",
    "HostRecord",
    "InvalidArgument",
    "LiveRequestRecord",
    "NotFound",
    "S3BlobStore",
    "S3Location",
    "SchemaError",
    "StagedUpload",
    "Store",
    "StoreError",
    "TokenRecord",
    "open_blob_backend",
    "parse_blob_url",
]
