"""Precision choice: bf16 where it measured faster, fp32 inference on a CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitrina.models import runtime
from vitrina.models.runtime import resolve_precision, resolve_training_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "frozen_prefix", "expected"), [
    (True, False, "bf16"),  # every block or a scratch CNN: 1.3-1.7x faster
    (True, True, "fp32"),  # the last blocks behind the ONNX Runtime prefix: slower in bf16
    (False, False, "fp32"),  # no native bf16: about 3x slower
])
def test_auto_training_precision_on_a_cpu(monkeypatch: pytest.MonkeyPatch, native: bool, frozen_prefix: bool, expected: str) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert resolve_training_precision("auto", CPU, frozen_prefix=frozen_prefix) == expected


def test_explicit_precision_wins_and_cpu_inference_stays_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert resolve_training_precision("bf16", CPU) == "bf16"
    assert resolve_training_precision("fp32", CPU, frozen_prefix=False) == "fp32"
    assert resolve_precision("bf16", CPU) == resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu sse avx2 avx512f avx512_vnni", False), ("fpu avx512f avx512_bf16 avx512_vnni", True), ("fpu amx_bf16 amx_tile", True),
])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(runtime, "CPUINFO", cpuinfo)
    assert runtime.cpu_has_native_bf16() is native
