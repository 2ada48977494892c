"""`vitrina predict --engine ray` against the local engine, side by side in one run.

Over a list file naming the 4,947 freiburg photos ``--copies`` times (5: 24,735 inputs) under
different names (symbolic links), it runs `vitrina predict MODEL LIST` with ``--engine local``,
``--engine ray`` (a local Ray the command starts), and ``--engine ray --address`` on a two-node
cluster made on this machine (``ray start --head --num-cpus 1`` and a second ``ray start
--address ... --num-cpus 1``, loopback only, started outside the timed window). For each it
prints images/s (the whole command, Ray's start or connection included), whether the rows are
those of the local engine (same top-1, probabilities within 1e-5), and the peak memory of the
whole session: the proportional set size (PSS) summed over every process the run added (the
command, Ray's daemons and workers), which splits shared pages among the processes mapping them;
the RSS sum, which counts them once per process, is printed beside it.

    python bench/bench_ray.py --model RUN_OR_ONNX [--copies 5]
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FREIBURG = REPO.parent / "shared" / "datasets" / "freiburg-groceries" / "images"
HEAD_PORT = 6390


def memory_of_new_processes(before: set[int]) -> tuple[float, float]:
    """MB of (PSS, RSS) summed over every process that did not exist before the run. PSS splits
    shared pages (libraries, Ray's shared-memory object store) among the processes that map them,
    so its sum is the session's memory; the RSS sum counts shared pages once per process."""
    pss = rss = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in before:
            try:
                for line in (entry / "smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
            except OSError:
                pass
    return pss / 1024, rss / 1024


def pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}


class Peak(threading.Thread):
    """Samples the memory of the processes started after ``before``, every 0.25 s."""

    def __init__(self, before: set[int]):
        super().__init__(daemon=True)
        self.before, self.peak, self.peak_rss, self.stopped = before, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            pss, rss = memory_of_new_processes(self.before)
            self.peak, self.peak_rss = max(self.peak, pss), max(self.peak_rss, rss)
            time.sleep(0.25)


def make_listing(folder: Path, copies: int) -> tuple[Path, int]:
    photos = sorted(FREIBURG.glob("*/*.png")) + sorted(FREIBURG.glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"no freiburg photos in {FREIBURG}")
    names = []
    for copy in range(copies):
        for photo in photos:
            link = folder / f"copy{copy}" / photo.parent.name / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(photo)
            names.append(str(link))
    listing = folder / "catalogue.txt"
    listing.write_text("\n".join(names) + "\n")
    return listing, len(names)


def run_predict(model: Path, listing: Path, out: Path, extra: list[str], before: set[int], env: dict | None = None) -> tuple[float, float, float]:
    """(seconds, peak MB of the processes the run added: PSS, RSS)."""
    peak = Peak(before)
    peak.start()
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "vitrina", "predict", str(model), str(listing), "--out", str(out), "--quiet", *extra],
                            capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    peak.stopped.set()
    peak.join()
    if result.returncode != 0:
        raise SystemExit(f"vitrina predict {' '.join(extra)} failed:\n{result.stderr[-3000:]}")
    return seconds, peak.peak, peak.peak_rss


def same_rows(reference: Path, other: Path) -> tuple[bool, str]:
    with open(reference, newline="") as a, open(other, newline="") as b:
        rows_a, rows_b = list(csv.DictReader(a)), list(csv.DictReader(b))
    if [r["path"] for r in rows_a] != [r["path"] for r in rows_b]:
        return False, "different paths or order"
    worst = 0.0
    for ra, rb in zip(rows_a, rows_b):
        if ra.get("label_1") != rb.get("label_1") or ra.get("error") != rb.get("error"):
            return False, f"different top-1 for {ra['path']}"
        for key in ra:
            if key.startswith("prob_") and ra[key]:
                worst = max(worst, abs(float(ra[key]) - float(rb[key])))
    return worst <= 1e-5, f"{len(rows_a)} rows, same top-1, max probability difference {worst:.1e}"


# Ray's cluster nodes authenticate with a token (~/.ray/auth_token, made once if missing).
CLUSTER_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}
NODE_OBJECT_STORE = str(256 * 1024**2)


def ray_cli(*args: str) -> None:
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    result = subprocess.run([ray, *args], capture_output=True, text=True, timeout=180, env=CLUSTER_ENV)
    if result.returncode != 0:
        raise SystemExit(f"ray {' '.join(args)} failed:\n{result.stdout[-1500:]}{result.stderr[-1500:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a run folder or an exported .onnx file")
    parser.add_argument("--copies", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitrina-bench-ray-") as tmp:
        folder = Path(tmp)
        listing, n = make_listing(folder, args.copies)
        print(f"{n:,} inputs ({args.copies} x the freiburg photos under other names); model {args.model}", flush=True)
        results = {}
        for name, extra in (("local", ["--engine", "local"]), ("ray, local", ["--engine", "ray"])):
            seconds, peak, peak_rss = run_predict(args.model, listing, folder / f"{name}.csv", extra, pids())
            results[name] = (seconds, peak)
            print(f"[{name}] {n / seconds:.1f} images/s ({seconds:.1f} s), peak memory of the session {peak:.0f} MB "
                  f"(PSS; RSS summed {peak_rss:.0f} MB)", flush=True)
        before = pids()
        env_port = f"127.0.0.1:{HEAD_PORT}"
        if not (Path.home() / ".ray" / "auth_token").exists():
            ray_cli("get-auth-token", "--generate")
        ray_cli("start", "--head", "--num-cpus", "1", "--port", str(HEAD_PORT), "--node-ip-address", "127.0.0.1",
                "--include-dashboard", "false", "--disable-usage-stats", "--object-store-memory", NODE_OBJECT_STORE)
        try:
            ray_cli("start", "--address", env_port, "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                    "--object-store-memory", NODE_OBJECT_STORE)
            seconds, peak, peak_rss = run_predict(args.model, listing, folder / "cluster.csv", ["--engine", "ray", "--address", env_port],
                                                  before, CLUSTER_ENV)
            results["ray, 2-node cluster"] = (seconds, peak)
            print(f"[ray, 2-node cluster] {n / seconds:.1f} images/s ({seconds:.1f} s), peak memory of the session, both nodes' "
                  f"daemons included, {peak:.0f} MB (PSS; RSS summed {peak_rss:.0f} MB)", flush=True)
        finally:
            ray_cli("stop", "--force")
        print("summary")
        local_rate = n / results["local"][0]
        for name, file in (("ray, local", "ray, local.csv"), ("ray, 2-node cluster", "cluster.csv")):
            same, detail = same_rows(folder / "local.csv", folder / file)
            print(f"  [{'met' if same else 'NOT MET'}] {name}: rows as the local engine ({detail})")
            print(f"  [{'met' if results[name][1] <= 2048 else 'NOT MET'}] {name}: peak memory {results[name][1]:.0f} MB <= 2 GB")
        ray_rate = n / results["ray, local"][0]
        print(f"  [{'met' if ray_rate >= 0.8 * local_rate else 'NOT MET'}] local Ray {ray_rate:.1f} images/s = "
              f"{ray_rate / local_rate:.2f}x the local engine's {local_rate:.1f} (at least 0.8x)")
        one, five, _ = os.getloadavg()
        print(f"  load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
