"""The moderation log's tables, its schema version, and the migrations that carry a log forward.

A log records its schema version in ``vitrina_schema`` (one row). Opening a log brings it to
:data:`SCHEMA_VERSION` under a lock, so replicas starting at once on a fresh or an old database
create and migrate it exactly once: PostgreSQL's transaction-level advisory lock, a file lock
beside an SQLite file. Logs written before the version table existed are version 1.
"""
from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Boolean, Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Table, Text, inspect, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from vitrina.errors import ConfigError

SCHEMA_VERSION = 2
# Any constant shared by every vitrina replica: the key of PostgreSQL's advisory lock.
ADVISORY_LOCK_KEY = 0x76697472696E61  # "vitrina"

metadata = MetaData()
checks_table = Table(
    "checks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", String(32), nullable=False),  # ISO 8601, UTC: sorts and reads well in any database
    Column("declared", String(200), nullable=False),
    Column("predicted", String(200), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("model_version", String(64), nullable=False),
    # Version 2: what a review needs. Null in checks logged before it.
    Column("top", Text, nullable=True),  # JSON: the listing's likeliest categories [{"label", "prob"}, ...]
    Column("margin", Float, nullable=True),  # the top probability minus the second
    Column("unknown_score", Float, nullable=True),
    Column("submitted_by", String(100), nullable=True),  # the API key's name
    Column("suggestion", String(200), nullable=True),  # the category suggested on a mismatch
    Column("declared_level", String(8), nullable=True),  # with a taxonomy: fine | coarse
    Column("suggestion_level", String(8), nullable=True),
    Index("ix_checks_verdict_id", "verdict", "id"),  # the moderation page: one verdict, newest first
    Index("ix_checks_margin", "margin"),  # the review queue: least sure first
)
photos_table = Table(
    "check_photos",
    metadata,
    Column("check_id", Integer, ForeignKey("checks.id"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("sha256", String(64), nullable=False, index=True),
    Column("predicted", String(200), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("media_type", String(100), nullable=True),
    Column("image", LargeBinary, nullable=True),
)
reviews_table = Table(
    "reviews",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("check_id", Integer, ForeignKey("checks.id"), nullable=False, index=True),
    Column("time", String(32), nullable=False),
    Column("reviewer", String(100), nullable=False),
    Column("action", String(16), nullable=False),  # confirm | correct | off_topic | skip
    Column("category", String(200), nullable=True),  # the label the review gives (confirm: the prediction)
    Column("new_class", Boolean, nullable=False, default=False),  # a category the model does not know
)
version_table = Table(
    "vitrina_schema",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: one row
    Column("version", Integer, nullable=False),
)



def _add_review_columns(connection: Connection) -> None:
    """1 -> 2: the columns a review needs (the reviews table itself is created with the others)."""
    present = {column["name"] for column in inspect(connection).get_columns(checks_table.name)}
    for column in ("top", "margin", "unknown_score", "submitted_by", "suggestion", "declared_level", "suggestion_level"):
        if column not in present:
            kind = checks_table.c[column].type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(f"ALTER TABLE {checks_table.name} ADD COLUMN {column} {kind}")


# MIGRATIONS[n] takes a log from version n to n + 1 inside the migration's transaction.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _add_review_columns}


def migrate(engine: Engine) -> int:
    """Create or carry the log forward to :data:`SCHEMA_VERSION`; returns the version it had."""
    with _exclusive(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
        found = _version(connection)
        if found > SCHEMA_VERSION:
            raise ConfigError(
                f"the moderation log has schema version {found}, written by a newer vitrina; this one reads up to "
                f"{SCHEMA_VERSION}: upgrade vitrina"
            )
        if found == 0:
            _create_all(connection)
        else:
            for version in range(found, SCHEMA_VERSION):
                MIGRATIONS[version](connection)
            _create_all(connection)  # the version table of a log from before it existed
        _set_version(connection, SCHEMA_VERSION)
    return found


def _version(connection: Connection) -> int:
    """The log's schema version: 0 for an empty database, 1 for a log from before the version table."""
    tables = set(inspect(connection).get_table_names())
    if version_table.name in tables:
        row = connection.execute(select(version_table.c.version)).first()
        if row is not None:
            return int(row.version)
    return 1 if checks_table.name in tables else 0


def _create_all(connection: Connection) -> None:
    for table in metadata.sorted_tables:
        connection.execute(CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            connection.execute(CreateIndex(index, if_not_exists=True))


def _set_version(connection: Connection, version: int) -> None:
    if connection.execute(update(version_table).values(version=version)).rowcount == 0:
        connection.execute(version_table.insert().values(id=1, version=version))


@contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """A lock file beside an SQLite log for the time of the migration (PostgreSQL locks in the transaction)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(Path(f"{database}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
