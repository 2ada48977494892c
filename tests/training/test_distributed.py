"""DDP through torchrun with 2 CPU processes (gloo) matches a single-process run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import make_shapes_dataset


def test_torchrun_two_processes_matches_single_process(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=24)
    common = ["train", str(data), "--mode", "scratch", "--model", "cnn1", "--epochs", "6", "--batch-size", "16",
              "--lr", "0.01", "--workers", "0", "--quiet", "--set", "model.input_size=32", "--set", "train.patience=0",
              "--set", f"train.cache_dir={tmp_path / 'cache'}"]
    single = subprocess.run([sys.executable, "-m", "vitrina", *common, "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout + single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "vitrina", *common, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    history = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(history) == 6
    # Both runs learn the task; the same global batch and step count keep them within noise.
    assert one["accuracy"] >= 0.9 and two["accuracy"] >= 0.9
    assert abs(one["accuracy"] - two["accuracy"]) <= 0.1
    # Only rank 0 writes: one TensorBoard event file, one history.
    assert len(list((tmp_path / "ddp" / "tensorboard").iterdir())) == 1
