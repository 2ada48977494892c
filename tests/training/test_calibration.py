"""Temperature scaling: recovers a known temperature and keeps every prediction's argmax."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitrina.evaluation.metrics import expected_calibration_error, softmax
from vitrina.models.registry import create_model
from vitrina.training.calibration import apply_temperature, fit_temperature


def test_fit_temperature_recovers_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    overconfident = true_logits * 3.0
    t = fit_temperature(overconfident, labels)
    assert 2.6 < t < 3.4
    before, _ = expected_calibration_error(labels, softmax(overconfident))
    after, _ = expected_calibration_error(labels, softmax(overconfident / t))
    assert after < before / 2


@pytest.mark.parametrize("head", ["linear", "mlp", "mlp_ensemble"])
def test_apply_temperature_scales_logits_and_keeps_argmax(head: str) -> None:
    torch.manual_seed(0)
    model = create_model("cnn1", 4, input_size=32, head=head).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        apply_temperature(model, 2.5)
        after = model(x)
    torch.testing.assert_close(after, before / 2.5, rtol=1e-5, atol=1e-6)
    assert torch.equal(after.argmax(1), before.argmax(1))
