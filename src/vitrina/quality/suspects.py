"""The suspects list: likely wrong labels and off-topic photos, each kind ranked on its own (labels by
the probability of the given label, off-topic by its score), the two rankings interleaved; a photo
and its copies are listed once."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitrina.quality.backbones import Item
from vitrina.quality.mislabels import LabelIssues
from vitrina.quality.offtopic import OffTopic


def list_suspects(
    items: list[Item], classes: Sequence[str], issues: LabelIssues | None, off_topic: OffTopic,
    groups: list[list[int]], review: int,
) -> list[dict]:
    """One row per suspect, best first: every flagged photo, and the ``review`` best ranked before that."""
    n = len(items)
    label_flag = issues.flagged if issues is not None else np.zeros(n, bool)
    rank_label = np.full(n, np.inf)
    if issues is not None:
        rank_label[np.argsort(issues.quality, kind="stable")] = np.arange(n)
    rank_out = np.full(n, np.inf)
    if np.isfinite(off_topic.outlier_z).any():
        rank_out[np.argsort(-np.nan_to_num(off_topic.outlier_z, nan=-np.inf), kind="stable")] = np.arange(n)
    group_of = {member: g for g, members in enumerate(groups) for member in members}
    order = _review_order(rank_label, rank_out, label_flag | off_topic.flagged, group_of, review)
    group_size = {g: len(members) for g, members in enumerate(groups)}
    distance, outlier_z, concept_z = off_topic.distance, off_topic.outlier_z, off_topic.concept_z
    suspects = []
    for rank, i in enumerate(order, start=1):
        kinds_here = [kind for kind, flag in (("label", label_flag[i]), ("off-topic", off_topic.flagged[i])) if flag]
        by_label = rank_label[i] <= rank_out[i]
        row = {
            "rank": rank,
            "path": items[i].path,
            "split": items[i].split,
            "label": items[i].label,
            "issue": "label" if by_label else "off-topic",
            "flagged": "+".join(kinds_here),
            "suggested": classes[int(issues.suggested[i])] if issues is not None and (by_label or label_flag[i]) else "",
            "label_probability": round(float(issues.quality[i]), 4) if issues is not None else None,
            "suggested_probability": round(float(issues.probabilities[i, issues.suggested[i]]), 4) if issues is not None else None,
            "outlier_distance": round(float(distance[i]), 4) if np.isfinite(distance[i]) else None,
            "outlier_z": round(float(outlier_z[i]), 2) if np.isfinite(outlier_z[i]) else None,
            "concept_z": round(float(concept_z[i]), 2) if np.isfinite(concept_z[i]) else None,
            "copies": group_size.get(group_of.get(i, -1), 1) - 1,
            "duplicate_group": group_of.get(i, -1) + 1 or "",
            "index": i,
        }
        suspects.append(row)
    return suspects


def _review_order(
    rank_label: np.ndarray, rank_out: np.ndarray, flagged: np.ndarray, group_of: dict[int, int], review: int
) -> list[int]:
    """Image indices in review order: by their better rank of the two; past ``review`` only flagged ones."""
    priority = np.minimum(rank_label, rank_out)
    listed_groups: set[int] = set()
    order: list[int] = []
    for i in np.lexsort((rank_out, priority)).tolist():
        if not np.isfinite(priority[i]):
            break
        if len(order) >= review and not flagged[i]:
            continue  # past the review list only flagged photos are listed
        if i in group_of:
            if group_of[i] in listed_groups:
                continue
            listed_groups.add(group_of[i])
        order.append(i)
    return order
