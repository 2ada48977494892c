"""Where a run folder's exported files live."""
from __future__ import annotations

from pathlib import Path


def default_onnx_path(run_dir: Path) -> Path:
    return run_dir / "model.onnx"


def int8_path_for(path: Path) -> Path:
    """The int8 file beside an export at ``path`` (``--int8`` of vitrina 0.1.0 wrote it there too)."""
    return path.with_name(f"{path.stem}.int8.onnx")




def precision_path_for(path: Path, precision: str) -> Path:
    """Where the other precision of an export at ``path`` goes: ``model.fp32.onnx`` or ``model.int8.onnx``."""
    return path.with_name(f"{path.stem}.{precision}.onnx")
