"""Run folders: one folder per job holding its config, metrics, plots, checkpoints and report."""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from vitrina.errors import VitrinaError


def new_run_dir(base: str | Path, prefix: str) -> Path:
    """Create and return a fresh folder ``base/prefix-NNN`` that did not exist before."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    taken = [int(m.group(1)) for p in base.iterdir() if (m := pattern.match(p.name))]
    number = max(taken, default=0) + 1
    while True:
        path = base / f"{prefix}-{number:03d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:  # a concurrent job took it
            number += 1


def prepare_out_dir(out: str | Path | None, base: str | Path, prefix: str, *, allow_existing: bool = False) -> Path:
    """The folder a job writes to: ``out`` if given (must be new or empty), else a new run folder."""
    if out is None:
        return new_run_dir(base, prefix)
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise VitrinaError(f"output path {path} exists and is not a folder")
    if path.exists() and any(path.iterdir()) and not allow_existing:
        raise VitrinaError(
            f"output folder {path} is not empty; choose a new --out so nothing already written is overwritten"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
