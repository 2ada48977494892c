"""Precision choice (bf16 where it measured faster, fp32 inference on a CPU) and when a body runs in ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitrina.models import runtime
from vitrina.models.onnx_graph import OnnxFeatureExtractor
from vitrina.models.registry import create_model, default_preprocess
from vitrina.models.runtime import resolve_precision, resolve_training_precision
from vitrina.models.unknown import penultimate_features

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


def test_a_body_goes_to_onnx_runtime_where_the_photos_pay_for_the_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("cnn1", 3, pretrained=False).eval()
    preprocess = default_preprocess("cnn1")
    images = np.random.default_rng(0).integers(0, 256, (6, preprocess.input_size, preprocess.input_size, 3), dtype=np.uint8)
    cpu, graphs = CPU, tmp_path / "onnx"
    assert runtime.export_pays(400, 224) and runtime.export_pays(250, 288) and not runtime.export_pays(1000, 64)

    eager = penultimate_features(model, images, preprocess, cpu, "fp32", tmp_path)  # 6 photos: not worth an export
    assert not graphs.exists()
    monkeypatch.setattr(runtime, "EXPORT_PAYS_FROM_PIXELS", 1)
    exported = penultimate_features(model, images, preprocess, cpu, "fp32", tmp_path)
    assert len(list(graphs.iterdir())) == 1
    np.testing.assert_allclose(exported, eager, rtol=1e-4, atol=1e-4)

    monkeypatch.setattr(runtime, "EXPORT_PAYS_FROM_PIXELS", 10**12)  # a graph already exported is used whatever the count
    assert runtime.body_in_onnx(model, preprocess, 1, tmp_path, cpu, "fp32")
    assert not runtime.body_in_onnx(model, preprocess, 1, tmp_path, cpu, "bf16") and not runtime.body_in_onnx(model, preprocess, 1, None, cpu, "fp32")
    calls: list[int] = []
    monkeypatch.setattr(OnnxFeatureExtractor, "__call__", lambda self, batch, **_: calls.append(len(batch)) or exported)
    penultimate_features(model, images, preprocess, cpu, "fp32", tmp_path)
    assert calls == [6]
