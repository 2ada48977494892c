"""`vitrina predict` on a catalogue export of URLs against the same photos as files, side by side.

The 4,947 freiburg photos, ``--copies`` times under other names, are predicted twice with the
defaults: from a list file of their paths, and from a CSV whose ``image_url`` column names each
at a web server on this machine's loopback interface (Python's threaded ``http.server``, in its
own process, serving the dataset folder: it takes CPU from the same two cores, as a CDN would
not). The URL run writes Parquet (``--out rows.parquet``). It prints images/s of each and their
ratio, the peak memory of each run's process tree (PSS summed), and whether the rows agree
(same top-1 and error, probabilities within 1e-5, input order).

    python bench/bench_remote.py --model RUN_OR_ONNX [--copies 2]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_ray import FREIBURG, Peak, pids


def start_web_server(root: Path) -> tuple[subprocess.Popen, str]:
    # Its request log (standard error) is dropped: unread, a pipe would fill and stall the server.
    process = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(root)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # "Serving HTTP on 127.0.0.1 port NNNNN (http://127.0.0.1:NNNNN/) ..."
    port = line.split(" port ")[1].split()[0]
    return process, f"http://127.0.0.1:{port}"


def run(model: Path, inputs: list[str], out: Path, extra: list[str]) -> tuple[float, float, str]:
    """(seconds, peak PSS MB of the command's processes, its summary line)."""
    peak = Peak(pids())
    peak.start()
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "vitrina", "predict", str(model), *inputs, "--out", str(out), "--quiet", *extra],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak.stopped.set()
    peak.join()
    if result.returncode != 0:
        raise SystemExit(f"vitrina predict failed:\n{result.stderr[-3000:]}")
    return seconds, peak.peak, result.stderr.strip().splitlines()[-1]


def agreement(files_csv: Path, urls_parquet: Path, urls: list[str]) -> tuple[bool, str]:
    import pyarrow.parquet as pq

    with open(files_csv, newline="") as fh:
        local = list(csv.DictReader(fh))
    remote = pq.read_table(urls_parquet).to_pylist()
    if [r["path"] for r in remote] != urls or len(local) != len(remote):
        return False, "different rows or order"
    worst = 0.0
    for a, b in zip(local, remote):
        if a["label_1"] != (b["label_1"] or "") or a["error"] != (b["error"] or ""):
            return False, f"different top-1 or error for {a['path']}: {b['error']}"
        if a["prob_1"]:
            worst = max(worst, max(abs(float(a[f"prob_{k}"]) - b[f"prob_{k}"]) for k in range(1, 6) if a.get(f"prob_{k}")))
    return worst <= 1e-5, f"{len(local)} rows, same top-1 and errors, max probability difference {worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a run folder or an exported .onnx file")
    parser.add_argument("--copies", type=int, default=2)
    args = parser.parse_args()
    photos = sorted(p.relative_to(FREIBURG).as_posix() for p in FREIBURG.glob("*/*") if p.suffix.lower() in (".png", ".jpg"))
    if not photos:
        raise SystemExit(f"no freiburg photos in {FREIBURG}")
    server, base = start_web_server(FREIBURG)
    try:
        with tempfile.TemporaryDirectory(prefix="vitrina-bench-remote-") as tmp:
            folder = Path(tmp)
            names, urls = [], []
            for copy in range(args.copies):
                for photo in photos:
                    link = folder / f"copy{copy}" / photo
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(FREIBURG / photo)
                    names.append(str(link))
                    urls.append(f"{base}/{photo}?copy={copy}")
            (folder / "files.txt").write_text("\n".join(names) + "\n")
            with open(folder / "export.csv", "w", newline="") as fh:
                csv.writer(fh).writerows([["sku", "image_url"], *([i, u] for i, u in enumerate(urls))])
            n = len(names)
            print(f"{n:,} inputs ({args.copies} x the freiburg photos); model {args.model}; web server {base}", flush=True)
            files_s, files_mb, files_line = run(args.model, [str(folder / "files.txt")], folder / "files.csv", [])
            print(f"[files] {n / files_s:.1f} images/s ({files_s:.1f} s), peak memory {files_mb:.0f} MB (PSS)\n  {files_line}", flush=True)
            urls_s, urls_mb, urls_line = run(args.model, [str(folder / "export.csv")], folder / "rows.parquet", ["--column", "image_url"])
            print(f"[urls]  {n / urls_s:.1f} images/s ({urls_s:.1f} s), peak memory {urls_mb:.0f} MB (PSS)\n  {urls_line}", flush=True)
            same, detail = agreement(folder / "files.csv", folder / "rows.parquet", urls)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("summary")
    print(f"  URLs {n / urls_s:.1f} images/s = {files_s / urls_s:.2f}x the files' {n / files_s:.1f} (the web server on the same 2 cores)")
    print(f"  [{'met' if same else 'NOT MET'}] rows from URLs (Parquet) as from files (CSV): {detail}")
    one, five, _ = os.getloadavg()
    print(f"  load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
