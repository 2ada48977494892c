"""The exclusion list (exclude.csv): the files `vitrina clean` suggests leaving out, each with its reasons;
``vitrina train --exclude`` reads it."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from vitrina.errors import ConfigError

_EVALUATION_FIRST = {"test": 0, "val": 1, "validation": 1}


def exclusions(kinds: list[str], groups: list[dict], suspects: list[dict]) -> list[dict]:
    """Files suggested for leaving out, each once with its reasons.

    Duplicates: one file of each group is kept, preferring a test, then a validation file, so
    the evaluation data stays and the copies that leak into training go. Suspects: every one.
    """
    reasons: dict[str, list[str]] = {}
    order: list[str] = []

    def add(path: str, reason: str) -> None:
        if path not in reasons:
            reasons[path] = []
            order.append(path)
        if reason not in reasons[path]:
            reasons[path].append(reason)

    if "duplicates" in kinds:
        for g in groups:
            members = g["members"]
            keep = min(range(len(members)), key=lambda k: (_EVALUATION_FIRST.get(members[k]["split"], 2), k))
            kept = members[keep]
            for k, member in enumerate(members):
                if k != keep:
                    add(member["path"], f"{g['kind']} duplicate of {kept['path']} ({kept['split']})")
    for s in suspects:
        if "label" in s["flagged"] and "labels" in kinds:
            add(s["path"], f"label {s['label']!r} looks wrong (suggested {s['suggested']!r})")
        if "off-topic" in s["flagged"] and "off-topic" in kinds:
            add(s["path"], "off-topic: far from every other photo")
    return [{"path": p, "reason": "; ".join(reasons[p])} for p in order]


def write_exclude(path: str | Path, excluded: list[dict]) -> Path:
    """The exclusion list as a CSV with ``path`` and ``reason`` columns (what ``--exclude`` reads)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a file name for the exclusion list")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "reason"])
        writer.writeheader()
        writer.writerows(excluded)
    os.replace(tmp, path)
    return path
