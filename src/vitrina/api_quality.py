"""Public API for data quality: `clean` (re-exported by :mod:`vitrina.api`). No parsing, no printing."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from vitrina.config import Config


@dataclass
class CleanResult:
    out_dir: Path
    summary: dict[str, Any]
    exclude_file: Path  # OUT/exclude.csv (and a copy at exclude_out when asked)


def clean(
    data: str | Path,
    out: str | Path | None = None,
    config: Config | str | Path | None = None,
    *,
    settings: Any = None,
    model: str | None = None,
    exclude_out: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    runs_dir: str | Path = "runs",
    log: Callable[[str], None] = print,
) -> CleanResult:
    """Find unreadable, duplicate, mislabelled and off-topic images of a dataset; never touches them.

    Writes report.html, suspects.csv, duplicates.csv, unreadable.csv, suspects.png, summary.json
    and exclude.csv (for ``train --exclude``) into one folder. ``model``: backbone name(s),
    comma-separated (default: ``settings.models``); ``exclude_out``: also write the exclusion
    list to this file (which must not exist yet).
    """
    from vitrina import config as config_lib
    from vitrina.api import resolve_config
    from vitrina.artifact import prepare_out_dir
    from vitrina.data.sources import load_dataset
    from vitrina.errors import VitrinaError
    from vitrina.quality.clean import CleanSettings, clean_dataset, write_exclude

    cfg = resolve_config(config)
    settings = settings or CleanSettings()
    if model:
        settings = replace(settings, models=model)
    settings.check()
    if exclude_out is not None and Path(exclude_out).exists():
        raise VitrinaError(f"{exclude_out} already exists; choose a new file for the exclusion list")
    dataset = load_dataset(data, cfg.data, carve_val=False)
    out_dir = prepare_out_dir(out, runs_dir, "clean")
    config_lib.save(cfg, out_dir)
    summary = clean_dataset(dataset, cfg, out_dir, settings, workers=workers, progress=progress, log=log)
    exclude_file = out_dir / "exclude.csv"
    if exclude_out is not None:
        write_exclude(exclude_out, _read_rows(exclude_file))
        summary["exclude_out"] = str(exclude_out)
    return CleanResult(out_dir, summary, exclude_file)


def _read_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
