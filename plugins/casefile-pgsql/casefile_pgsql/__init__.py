"""Casefile plugin for PostgreSQL servers: what a database vendor's support team asks for first."""

from __future__ import annotations

from casefile_pgsql.collector import PostgresCollector
from casefile_pgsql.pglog import PATTERNS, PgLogLine, count_patterns, parse_pg_line, read_recent

__all__ = ["PATTERNS", "PgLogLine", "PostgresCollector", "count_patterns", "parse_pg_line", "read_recent"]
