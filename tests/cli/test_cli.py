"""The command line: help for every command, clean errors (no tracebacks) for user mistakes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vitrina.cli import build_parser, main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitrina", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_top_level_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: vitrina {command}" in out


def test_missing_data_is_a_clean_error(tmp_path: Path) -> None:
    result = run_cli("inspect", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "error" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_setting_is_a_clean_error(tmp_path: Path) -> None:
    result = run_cli("train", str(tmp_path), "--set", "train.epoch=3")
    assert result.returncode == 2
    assert "unknown setting 'train.epoch'" in result.stderr
    assert "Traceback" not in result.stderr


def test_inspect_writes_config_and_summary(tmp_path: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    for i in range(3):
        make_image(tmp_path / "data" / "red" / f"r{i}.jpg", (220, 30, 30))
        make_image(tmp_path / "data" / "blue" / f"b{i}.png", (30, 30, 220))
    (tmp_path / "data" / "blue" / "broken.jpg").write_bytes(b"not an image at all")
    code = main(["inspect", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--quiet", "--set", "data.val_fraction=0.3"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["splits"]["train"] == {"blue": 3, "red": 3}
    assert [s["path"].endswith("broken.jpg") for s in summary["skipped"]] == [True]
    assert "val_fraction: 0.3" in (tmp_path / "out" / "config.yaml").read_text()


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("efficientnet_lite0", "efficientnet_lite2", "fmnist_cnn", "cnn1", "cnn2", "cnn3", "ad_cnn64"):
        assert name in out
