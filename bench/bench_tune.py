"""`vitrina tune` on freiburg-groceries split 0 (bottleneck): best trial, margin, resume, reproduction.

Runs `vitrina tune --mode bottleneck` with a time budget (default 10 minutes). Halfway through the
budget the search is killed (SIGKILL) and restarted with `--resume`; the benchmark checks that
the study kept every trial finished before the kill. It then prints the best trial and its margin
over the default config (trial 0), retrains the best config with `vitrina train --config` and
prints the difference of its validation accuracy from the trial's (target: within 0.5 points).

    python bench/bench_tune.py [--minutes 10] [--runs DIR] [--limit N] [--no-kill]

``--limit N`` keeps at most N photos per class (with a small ``--minutes``: a quick check).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from bench_compare import SHARED, freiburg_data, vitrina


def finished_trials(study_db: Path) -> dict[int, float]:
    """Trial number -> value of the complete trials (empty while the study is being created)."""
    try:
        study = optuna.load_study(study_name="vitrina", storage=f"sqlite:///{study_db}")
    except Exception:  # not created yet, or briefly locked by the search
        return {}
    return {t.number: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}


def killed_then_resumed(data: Path, out: Path, minutes: float) -> None:
    """Run the search, kill it halfway through the budget, resume it for the rest; check the kept trials."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "vitrina", "tune", str(data), "--out", str(out), "--mode", "bottleneck", "--minutes", str(minutes)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=minutes * 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = finished_trials(out / "study.db")
    print(f"killed after {time.perf_counter() - started:.0f} s with {len(before)} finished trials; resuming", flush=True)
    left = max(0.5, minutes - (time.perf_counter() - started) / 60)
    print(vitrina("tune", str(data), "--out", str(out), "--resume", "--minutes", f"{left:.2f}").stdout)
    after = finished_trials(out / "study.db")
    kept = all(after.get(number) == value for number, value in before.items())
    print(f"study kept every trial finished before the kill ({len(before)}): {'yes' if kept else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description="vitrina tune on freiburg split 0 (bottleneck)")
    parser.add_argument("--minutes", type=float, default=10.0, help="search budget (default 10)")
    parser.add_argument("--runs", default=None, help="keep the outputs here (default: a temporary folder)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N photos per class per split")
    parser.add_argument("--no-kill", action="store_true", help="one uninterrupted search")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} not found: the tuning benchmark needs ../shared/datasets; nothing measured.")
        return
    runs = Path(args.runs or tempfile.mkdtemp(prefix="vitrina-bench-tune-"))
    runs.mkdir(parents=True, exist_ok=True)
    data = freiburg_data(runs, args.limit)
    out = runs / "tune"
    started = time.perf_counter()
    if args.no_kill:
        print(vitrina("tune", str(data), "--out", str(out), "--mode", "bottleneck", "--minutes", str(args.minutes)).stdout)
    else:
        killed_then_resumed(data, out, args.minutes)
    print(f"search wall time {(time.perf_counter() - started) / 60:.1f} min")

    summary = json.loads((out / "tune.json").read_text())
    print(f"best trial {summary['best_trial']}: validation accuracy {summary['best_value']:.4f} {summary['best_params']}")
    if summary["default_value"] is not None:
        print(f"default config: {summary['default_value']:.4f}; margin {summary['margin'] * 100:+.2f} points")
    retrained = runs / "best"
    vitrina("train", str(data), "--config", str(out / summary["best_config"]), "--out", str(retrained), "--quiet")
    accuracy = json.loads((retrained / "metrics.json").read_text())["val_accuracy"]
    difference = (accuracy - summary["best_value"]) * 100
    print(f"retrained with vitrina train --config: validation accuracy {accuracy:.4f} ({difference:+.2f} points; "
          f"within 0.5: {'yes' if abs(difference) <= 0.5 else 'NO'})")
    print(f"outputs: {runs}")


if __name__ == "__main__":
    main()
