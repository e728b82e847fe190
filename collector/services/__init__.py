"""gRPC servicers of the collector: Enroll, Ingest, Query."""

from collector.services.enroll import EnrollService
from collector.services.ingest import IngestLimits, IngestService
from collector.services.query import QueryService

__all__ = ["EnrollService", "IngestLimits", "IngestService", "QueryService"]
