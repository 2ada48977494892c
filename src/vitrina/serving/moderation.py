"""The moderation log: every listing check, kept for moderators and queryable by verdict.

Each check is one row of ``checks`` (time, declared and predicted category, confidence,
verdict, model version) with one row per photo in ``check_photos`` (SHA-256, the photo's own
prediction, and the image bytes only when the server is configured to keep them). The log lives
in an embedded SQLite file by default; any database URL SQLAlchemy understands works too
(``postgresql+psycopg://...`` with its driver installed).
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, insert, select
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from vitrina.errors import ConfigError
from vitrina.serving.errors import LogUnavailable
from vitrina.serving.schema import checks_table, migrate, photos_table, reviews_table

T = TypeVar("T")
log = logging.getLogger("uvicorn.error").getChild("vitrina")
# A busy database (another writer holds the lock) is retried: SQLite's own busy wait of at most
# MAX_BUSY_WAIT seconds an attempt, then a pause doubling from FIRST_PAUSE to LAST_PAUSE, until the deadline.
MAX_BUSY_WAIT = 2.0
FIRST_PAUSE, LAST_PAUSE = 0.05, 1.0
# Seconds a call waits for a busy database when its caller sets no deadline.
DEFAULT_WAIT = 5.0
# Seconds a client is told to wait after the log was unavailable.
RETRY_AFTER = "2"
# A database server: connections per server process (a bounded pool), and seconds to connect.
POOL_SIZE, POOL_OVERFLOW = 4, 4
CONNECT_TIMEOUT = 5
INSERT_LOCK_KEY = 0x76697472696E62  # PostgreSQL advisory lock held by each insert until it commits
PURGE_EVERY = 3600.0  # seconds between removals of photos past their retention period


@dataclass
class PhotoRecord:
    sha256: str
    predicted: str
    confidence: float
    media_type: str | None = None
    image: bytes | None = None


@dataclass
class CheckRecord:
    declared: str
    predicted: str
    confidence: float
    verdict: str
    model_version: str
    photos: list[PhotoRecord] = field(default_factory=list)
    top: list[dict[str, Any]] | None = None  # the listing's likeliest categories: [{"label", "prob"}, ...]
    margin: float | None = None  # top probability minus the second
    unknown_score: float | None = None
    submitted_by: str | None = None  # the API key's name
    suggestion: str | None = None
    declared_level: str | None = None  # fine | coarse (the taxonomy level of the declared category)
    suggestion_level: str | None = None


STORE_IMAGES = ("all", "flagged", "none")  # which checks keep their photos: every one, mismatch and uncertain, none


def database_url(target: str | Path) -> str:
    """A database URL from a URL or a file path (a path means an SQLite file there)."""
    text = str(target)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ModerationLog:
    """Records checks and lists them, newest first. Thread-safe; calls block on the database."""

    def __init__(self, target: str | Path, store_images: str = "flagged", max_image_bytes: int | None = None,
                 retention_days: float | None = None):
        if store_images not in STORE_IMAGES:
            raise ConfigError(f"--store-images must be one of {', '.join(STORE_IMAGES)}, got {store_images!r}")
        self.url = database_url(target)
        self.store_images, self.max_image_bytes, self.retention_days = store_images, max_image_bytes, retention_days
        self._last_purge = -math.inf  # never: the first check recorded starts a purge, however long the machine has been up
        try:
            url = make_url(self.url)
        except ArgumentError as exc:
            raise ConfigError(f"moderation database: not a database URL or path: {target} ({exc})") from None
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = _engine(url)
            migrate(self.engine)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(f"moderation database {url.render_as_string(hide_password=True)}: {exc}") from None

    def record(self, check: CheckRecord, deadline: float | None = None) -> int:
        """Store one check with its photos in one transaction; returns its id.

        While the database is busy or unreachable the write is retried until ``deadline`` (a
        ``time.monotonic()`` value; default: ``DEFAULT_WAIT`` seconds from now); then :class:`LogUnavailable`. So a check is
        either stored or refused, never half-stored.
        """
        check_id = self.retrying(lambda wait: self._insert(check, wait), deadline, "the check was not recorded")
        if self.retention_days is not None and time.monotonic() - self._last_purge > PURGE_EVERY:
            self._last_purge = time.monotonic()  # in the background: the check is answered whatever the purge meets
            threading.Thread(target=self.purge_old_photos, name="vitrina-photo-retention", daemon=True).start()
        return check_id

    def purge_old_photos(self) -> int:
        """Forget the photos past the retention period; a failure is logged and tried again later."""
        try:
            return self.retrying(self._purge_images, None, "old photos were not removed")
        except LogUnavailable as exc:
            log.warning("%s", exc.message)
            return 0

    def keeps(self, check: CheckRecord, photo: PhotoRecord) -> bool:
        """Whether this photo's bytes go into the log: the storage policy and the size cap."""
        wanted = self.store_images == "all" or (self.store_images == "flagged" and check.verdict != "match")
        return wanted and photo.image is not None and (self.max_image_bytes is None or len(photo.image) <= self.max_image_bytes)

    def _purge_images(self, wait: float) -> int:
        """Forget the photo bytes of checks older than the retention period (their rows stay)."""
        cutoff = datetime.now(timezone.utc).timestamp() - (self.retention_days or 0) * 86400
        oldest = datetime.fromtimestamp(cutoff, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        old_ids = select(checks_table.c.id).where(checks_table.c.time < oldest)
        with self.engine.begin() as connection:
            self.busy_wait(connection, wait)
            done = connection.execute(
                photos_table.update().where(photos_table.c.check_id.in_(old_ids), photos_table.c.image.is_not(None)).values(image=None)
            )
        return int(done.rowcount or 0)

    def _insert(self, check: CheckRecord, wait: float) -> int:
        with self.engine.begin() as connection:
            self.busy_wait(connection, wait)
            if self.engine.dialect.name == "postgresql":
                # Checks commit in the order of their ids (SQLite's write lock already does this), so
                # a reader following the log with ?after= never passes an id that commits later.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({INSERT_LOCK_KEY})")
            check_id = connection.execute(
                insert(checks_table).values(
                    time=_now(), declared=check.declared, predicted=check.predicted, confidence=check.confidence,
                    verdict=check.verdict, model_version=check.model_version,
                    top=json.dumps(check.top) if check.top is not None else None, margin=check.margin,
                    unknown_score=check.unknown_score, submitted_by=check.submitted_by, suggestion=check.suggestion,
                    declared_level=check.declared_level, suggestion_level=check.suggestion_level,
                )
            ).inserted_primary_key[0]
            if not check.photos:
                return int(check_id)
            connection.execute(
                insert(photos_table),
                [
                    {
                        "check_id": check_id, "position": position, "sha256": photo.sha256, "predicted": photo.predicted,
                        "confidence": photo.confidence, "media_type": photo.media_type,
                        "image": photo.image if self.keeps(check, photo) else None,
                    }
                    for position, photo in enumerate(check.photos)
                ],
            )
        return int(check_id)

    def recent(self, verdict: str | None = None, limit: int = 50, before_id: int | None = None,
               deadline: float | None = None, after_id: int | None = None) -> list[dict[str, Any]]:
        """Checks newest first, optionally of one verdict and older than ``before_id`` (paging back);
        or, with ``after_id``, the checks newer than it, oldest first (following the log)."""
        return self.retrying(lambda wait: self._recent(verdict, limit, before_id, after_id, wait), deadline, "the log cannot be read")

    def _recent(self, verdict: str | None, limit: int, before_id: int | None, after_id: int | None, wait: float) -> list[dict[str, Any]]:
        order = checks_table.c.id.asc() if after_id is not None else checks_table.c.id.desc()
        query = select(checks_table).order_by(order).limit(limit)
        if verdict is not None:
            query = query.where(checks_table.c.verdict == verdict)
        if before_id is not None:
            query = query.where(checks_table.c.id < before_id)
        if after_id is not None:
            query = query.where(checks_table.c.id > after_id)
        return self.checks_where(query, wait)

    def checks_where(self, query: Any, wait: float) -> list[dict[str, Any]]:
        """The checks a query selects, each with its photos and its reviews (the audit trail)."""
        with self.engine.connect() as connection:
            self.busy_wait(connection, wait)
            rows = [check_row(row) for row in connection.execute(query)]
            ids = [row["id"] for row in rows]
            photos = self.photos_of(connection, ids) if ids else {}
            reviews = reviews_of(connection, ids) if ids else {}
        for row in rows:
            row["photos"], row["reviews"] = photos.get(row["id"], []), reviews.get(row["id"], [])
        return rows

    @staticmethod
    def photos_of(connection: Connection, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        photo_rows = connection.execute(
            select(
                photos_table.c.check_id, photos_table.c.position, photos_table.c.sha256, photos_table.c.predicted,
                photos_table.c.confidence, photos_table.c.media_type, photos_table.c.image.is_not(None).label("stored"),
            )
            .where(photos_table.c.check_id.in_(ids))
            .order_by(photos_table.c.check_id, photos_table.c.position)
        )
        photos: dict[int, list[dict[str, Any]]] = {}
        for photo in photo_rows:
            photos.setdefault(photo.check_id, []).append(
                {"position": photo.position, "sha256": photo.sha256, "predicted": photo.predicted,
                 "confidence": photo.confidence, "image_stored": bool(photo.stored)}
            )
        return photos

    def photo(self, check_id: int, position: int, deadline: float | None = None) -> tuple[bytes, str | None] | None:
        """A stored photo's bytes and media type, or None when absent or not kept."""
        query = select(photos_table.c.image, photos_table.c.media_type).where(
            photos_table.c.check_id == check_id, photos_table.c.position == position
        )

        def read(wait: float) -> Any:
            with self.engine.connect() as connection:
                self.busy_wait(connection, wait)
                return connection.execute(query).first()

        row = self.retrying(read, deadline, "the photo cannot be read")
        if row is None or row.image is None:
            return None
        return bytes(row.image), row.media_type

    def close(self) -> None:
        self.engine.dispose()

    def busy_wait(self, connection: Connection, seconds: float) -> None:
        """How long SQLite itself waits for another writer's lock in this attempt."""
        if self.engine.dialect.name == "sqlite":
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {int(min(seconds, MAX_BUSY_WAIT) * 1000)}")

    def retrying(self, attempt: Callable[[float], T], deadline: float | None, consequence: str) -> T:
        """``attempt(seconds it may wait for a lock)``, again after a pause while the database is busy, until ``deadline``."""
        deadline = time.monotonic() + DEFAULT_WAIT if deadline is None else deadline
        pause = FIRST_PAUSE
        while True:
            try:
                return attempt(max(0.0, deadline - time.monotonic()))
            except OperationalError as exc:  # locked, busy, or the database server unreachable: may pass
                reason = _reason(exc)
            except SQLAlchemyError as exc:
                raise LogUnavailable(f"the moderation log failed ({_reason(exc)}); {consequence}", {"Retry-After": RETRY_AFTER}) from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise LogUnavailable(
                    f"the moderation log is busy or unreachable ({reason}); {consequence}: retry shortly", {"Retry-After": RETRY_AFTER}
                )
            time.sleep(min(pause, left))
            pause = min(2 * pause, LAST_PAUSE)


def _engine(url: URL) -> Engine:
    """SQLite with its pragmas, or a database server through a bounded pool that checks connections."""
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {"connect_timeout": CONNECT_TIMEOUT} if url.get_backend_name() == "postgresql" else {}
    return create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW, pool_timeout=DEFAULT_WAIT,
                         pool_pre_ping=True, connect_args=connect_args)


def _reason(exc: SQLAlchemyError) -> str:
    """The driver's own message, without SQLAlchemy's statement and parameters."""
    original = getattr(exc, "orig", None)
    return str(original if original is not None else exc).splitlines()[0][:200]


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL: readers never block the writer, several server processes share the file, commits are cheap."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def check_row(row: Any) -> dict[str, Any]:
    """A ``checks`` row as the API shows it (``top`` parsed from its JSON)."""
    record = dict(row._mapping)
    record["top"] = json.loads(record["top"]) if record.get("top") else None
    return record


def reviews_of(connection: Connection, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Every review of these checks, oldest first: the audit trail."""
    found: dict[int, list[dict[str, Any]]] = {}
    query = select(reviews_table).where(reviews_table.c.check_id.in_(ids)).order_by(reviews_table.c.id)
    for review in connection.execute(query):
        found.setdefault(review.check_id, []).append(
            {"id": review.id, "time": review.time, "reviewer": review.reviewer, "action": review.action,
             "category": review.category, "new_class": bool(review.new_class)})
    return found
