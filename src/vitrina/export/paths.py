"""Where a run folder's exported files live."""
from __future__ import annotations

from pathlib import Path


def default_onnx_path(run_dir: Path) -> Path:
    return run_dir / "model.onnx"


def int8_path_for(path: Path) -> Path:
    return path.with_name(f"{path.stem}.int8.onnx")


