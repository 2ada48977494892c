"""Where training batches are augmented: in a worker process beside the model, or in the training
process between steps (what `vitrina train` does where every core computes), and how close the
plan's estimate of an epoch comes to the epoch measured.

Runs `vitrina train DATA --epochs N` (the defaults otherwise) once per variant and repeat, in
turn, each in its own process, and prints each epoch's seconds and training images/s beside the
plan's estimate:

  default   the rule as shipped (vitrina.training.loop.augments_in_worker)
  worker    a worker process whatever the cores (the rule before it)

    python bench/bench_augment_worker.py DATA [--epochs 2] [--repeats 1] [--runs DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# The "worker" variant: the rule replaced, in the trainer's plan and in the loop, by the old one.
FORCE_WORKER = """
import sys
from vitrina import cli
from vitrina.training import loop, trainer
always = lambda transform, workers, device, processes=1: transform is not None and workers != 0
loop.augments_in_worker = trainer.augments_in_worker = always
sys.exit(cli.main(sys.argv[1:]))
"""
DEFAULT = "import sys\nfrom vitrina import cli\nsys.exit(cli.main(sys.argv[1:]))\n"


def train(variant: str, data: str, epochs: int, out: Path, cache: Path) -> dict:
    code = FORCE_WORKER if variant == "worker" else DEFAULT
    cmd = [sys.executable, "-c", code, "train", data, "--epochs", str(epochs), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "VITRINA_CACHE": str(cache)})
    if proc.returncode != 0:
        raise SystemExit(f"[{variant}] training failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    plan = json.loads((out / "plan.json").read_text())
    history = json.loads((out / "history.json").read_text())
    return {"plan": plan, "history": history}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.runs or tempfile.mkdtemp(prefix="bench-augment-"))
    cache = root / "cache"  # shared: the first run decodes the photos, the others read them
    print(f"cpu cores {os.cpu_count()}; runs in {root}")
    print("| variant | repeat | calibrated step ms/image | plan s/epoch | epoch s (measured) | training images/s |")
    print("|---|---|---|---|---|---|")
    for repeat in range(args.repeats):
        for variant in ("default", "worker"):
            result = train(variant, args.data, args.epochs, root / f"{variant}-{repeat}", cache)
            plan, history = result["plan"], result["history"]
            step = next((r for r in plan["reasons"] if r.startswith("calibrated here")), "")
            seconds = ", ".join(f"{row['seconds']:.1f}" for row in history)
            speed = ", ".join(f"{row['images_per_second']:.2f}" for row in history)
            print(f"| {variant} | {repeat} | {step.removeprefix('calibrated here: ')} | {plan['seconds_per_epoch']:.1f} | {seconds} | {speed} |",
                  flush=True)


if __name__ == "__main__":
    main()
