"""The public API of the review loop: moderators' reviews exported as training data."""
from __future__ import annotations

from pathlib import Path

from vitrina.serving.review_export import ReviewExport, export_reviews

__all__ = ["ReviewExport", "export_reviews"]


def review_export(database: str | Path, out: str | Path) -> ReviewExport:
    """Write the reviewed photos of a moderation log (an SQLite path or a database URL, as
    ``vitrina serve --db``) into ``out``: ``labels.csv`` (a dataset ``vitrina train`` reads, with
    each photo's provenance), ``off_topic.csv`` and ``photos/``. Checks whose reviews disagree are
    left out and counted."""
    return export_reviews(database, out)
