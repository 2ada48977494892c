"""Drift at a glance: per day, the share of mismatches, uncertain checks and unknown photos, and the
mix of declared and predicted categories against the mix the model was trained on.

A category is flagged on a day with at least :data:`MIN_CHECKS` checks when its share of that
day's declared or predicted categories is more than :data:`HIGH` times its training share, or
less than :data:`LOW` times it (a category sellers suddenly file much more or less, or a kind of
product the model now sees far more or less often than it learned).
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import case, func, select

from vitrina.serving.moderation import ModerationLog
from vitrina.serving.schema import checks_table

MIN_CHECKS = 50
HIGH, LOW = 2.0, 0.5


def drift_report(log: ModerationLog, days: int, training_counts: Mapping[str, int], unknown_threshold: float | None,
                 deadline: float | None = None, today: datetime | None = None) -> dict[str, Any]:
    """The last ``days`` days of the log (UTC), oldest first, with the categories flagged each day."""
    now = today or datetime.now(timezone.utc)
    since = (now - timedelta(days=days - 1)).strftime("%Y-%m-%d")
    rows = log.retrying(lambda wait: _counts(log, since, unknown_threshold, wait), deadline, "the drift report cannot be read")
    total = sum(training_counts.values())
    training = {name: count / total for name, count in training_counts.items()} if total else {}
    by_day: dict[str, dict[str, Any]] = {}
    for day, verdict, declared, predicted, checks, unknown in rows:
        entry = by_day.setdefault(day, {"day": day, "checks": 0, "verdicts": {}, "unknown": 0, "declared": {}, "predicted": {}})
        entry["checks"] += checks
        entry["unknown"] += unknown
        entry["verdicts"][verdict] = entry["verdicts"].get(verdict, 0) + checks
        entry["declared"][declared] = entry["declared"].get(declared, 0) + checks
        entry["predicted"][predicted] = entry["predicted"].get(predicted, 0) + checks
    report = []
    for day in sorted(by_day):
        entry = by_day[day]
        n = entry["checks"]
        entry["shares"] = {"mismatch": entry["verdicts"].get("mismatch", 0) / n, "uncertain": entry["verdicts"].get("uncertain", 0) / n,
                           "unknown": entry["unknown"] / n}
        entry["flags"] = _flags(entry, training)
        report.append(entry)
    return {"days": report, "training_mix": training, "min_checks": MIN_CHECKS, "high": HIGH, "low": LOW}


def _counts(log: ModerationLog, since: str, unknown_threshold: float | None, wait: float) -> list[tuple]:
    checks = checks_table.c
    day = func.substr(checks.time, 1, 10)
    unknown = (func.sum(case((checks.unknown_score > unknown_threshold, 1), else_=0)) if unknown_threshold is not None
               else func.sum(0))
    query = (select(day, checks.verdict, checks.declared, checks.predicted, func.count(), unknown)
             .where(checks.time >= since).group_by(day, checks.verdict, checks.declared, checks.predicted))
    with log.engine.connect() as connection:
        log.busy_wait(connection, wait)
        return [(r[0], r[1], r[2], r[3], int(r[4]), int(r[5] or 0)) for r in connection.execute(query)]


def _flags(entry: dict[str, Any], training: Mapping[str, float]) -> list[dict[str, Any]]:
    """Categories whose declared or predicted share is beyond HIGH or LOW times their training share
    (on a day with at least MIN_CHECKS checks at the training classes' level)."""
    flags = []
    for by in ("declared", "predicted"):
        n = sum(count for name, count in entry[by].items() if name in training)  # parents (a taxonomy) aside
        if n < MIN_CHECKS:
            continue
        for name, share_trained in sorted(training.items()):
            share = entry[by].get(name, 0) / n
            if share_trained > 0 and (share > HIGH * share_trained or share < LOW * share_trained):
                flags.append({"category": name, "by": by, "share": share, "training_share": share_trained,
                              "direction": "high" if share > share_trained else "low"})
    return flags
