"""Moderators' reviews of logged checks: the queue of checks to review, and each review kept.

A review never changes its check: it is a row of ``reviews`` (who, when, the action and the
category it gives), so the log keeps every verdict and every review, an audit trail. A check
leaves the queue once it has reviews that agree (skips aside); reviews that disagree keep it in
the queue, marked. A reviewer's own skips hide a check from that reviewer only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import case, func, insert, literal, or_, select

from vitrina.serving.errors import InvalidQuery, ServingError
from vitrina.serving.moderation import ModerationLog
from vitrina.serving.schema import checks_table, reviews_table

ACTIONS = ("confirm", "correct", "off_topic", "skip")
QUEUE_ORDERS = ("informative", "newest")
FLAGGED = ("uncertain", "mismatch")
LOW_MARGIN = 0.2  # a check whose top two categories are closer than this is as informative as an uncertain one
OFF_TOPIC = ":off_topic"  # what an off-topic review counts as, beside categories, when reviews are compared


class CheckNotFound(ServingError):
    status, code = 404, "not_found"


@dataclass(frozen=True)
class QueueFilter:
    """Which checks the queue offers, and in what order."""

    verdicts: tuple[str, ...] = FLAGGED
    category: str | None = None  # declared or predicted
    model_version: str | None = None
    since: str | None = None  # ISO date or time, inclusive
    until: str | None = None  # ISO date (that whole day) or time, inclusive
    order: str = "informative"  # uncertain and low-margin first, then mismatches; or newest first
    limit: int = 20


def review_queue(log: ModerationLog, reviewer: str, filters: QueueFilter, deadline: float | None = None) -> list[dict[str, Any]]:
    """Checks to review, most informative (or newest) first, each with photos, reviews and a disagreement flag."""
    if filters.order not in QUEUE_ORDERS:
        raise InvalidQuery(f"order must be one of {', '.join(QUEUE_ORDERS)}, got {filters.order!r}")
    return log.retrying(lambda wait: _queue(log, reviewer, filters, wait), deadline, "the review queue cannot be read")


def _queue(log: ModerationLog, reviewer: str, filters: QueueFilter, wait: float) -> list[dict[str, Any]]:
    reviews, checks = reviews_table.c, checks_table.c
    given = func.coalesce(reviews.category, literal(OFF_TOPIC))
    settled = (select(reviews.check_id).where(reviews.action != "skip").group_by(reviews.check_id)
               .having(func.count(func.distinct(given)) == 1))
    skipped = select(reviews.check_id).where(reviews.action == "skip", reviews.reviewer == reviewer)
    query = select(checks_table).where(checks.verdict.in_(filters.verdicts), checks.id.not_in(settled), checks.id.not_in(skipped))
    if filters.category:
        query = query.where(or_(checks.declared == filters.category, checks.predicted == filters.category))
    if filters.model_version:
        query = query.where(checks.model_version == filters.model_version)
    if filters.since:
        query = query.where(checks.time >= filters.since)
    if filters.until:
        query = query.where(checks.time <= (filters.until + "T99" if len(filters.until) == 10 else filters.until))
    if filters.order == "newest":
        query = query.order_by(checks.id.desc())
    else:
        margin = func.coalesce(checks.margin, 1.0)
        unsure = case((or_(checks.verdict == "uncertain", margin < LOW_MARGIN), 0), else_=1)
        query = query.order_by(unsure, margin.asc(), checks.id.desc())
    rows = log.checks_where(query.limit(filters.limit), wait)
    for row in rows:
        row["disagreement"] = len({r["category"] or OFF_TOPIC for r in row["reviews"] if r["action"] != "skip"}) > 1
    return rows


def record_review(log: ModerationLog, check_id: int, reviewer: str, action: str, category: str | None,
                  known: list[str], deadline: float | None = None) -> dict[str, Any]:
    """Keep one review of a check; returns it. ``known``: the categories the model knows."""
    if action not in ACTIONS:
        raise InvalidQuery(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    category = (category or "").strip() or None
    if action == "correct" and category is None:
        raise InvalidQuery("a correction needs the right category: {\"action\": \"correct\", \"category\": \"...\"}")
    if action != "correct" and category is not None:
        raise InvalidQuery(f"only a correction names a category; {action} takes none")
    return log.retrying(lambda wait: _insert(log, check_id, reviewer, action, category, known, wait), deadline,
                        "the review was not recorded")


def _insert(log: ModerationLog, check_id: int, reviewer: str, action: str, category: str | None, known: list[str],
            wait: float) -> dict[str, Any]:
    with log.engine.begin() as connection:
        log.busy_wait(connection, wait)
        check = connection.execute(select(checks_table.c.predicted, checks_table.c.top).where(checks_table.c.id == check_id)).first()
        if check is None:
            raise CheckNotFound(f"no check {check_id} in the moderation log")
        if action == "confirm":  # the likeliest class (a check declared at a parent level predicts the parent)
            category = json.loads(check.top)[0]["label"] if check.top else check.predicted
        review = {
            "check_id": check_id, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "reviewer": reviewer, "action": action, "category": category,
            "new_class": category is not None and category not in known,
        }
        review_id = connection.execute(insert(reviews_table).values(**review)).inserted_primary_key[0]
    return {"id": int(review_id), **{k: v for k, v in review.items() if k != "check_id"}}
