"""`vitrina serve` under load: concurrent clients posting real photos to /v1/check on loopback.

From one run it prints:

- the offline throughput of `vitrina predict` (``vitrina.api.predict``) on the same photos,
  measured before and after the servers (the machine's other work changes its speed over a run),
- for the server with micro-batching on, then off (``--max-batch 1``): checks/s, p50/p99 latency,
  unexpected answers (anything but 200), the verdicts, and the server's memory (VmRSS) after a
  warm-up and after the load,
- the on/off throughput ratio and the server's checks/s as a fraction of the offline throughput.

The server is the real command (``python -m vitrina serve MODEL --port 0``) in its own process.
The load generator runs in this process: ``--clients`` asyncio connections (HTTP/1.1 keep-alive)
that each post one photo at a time with its true category, reusing request bytes built once, so
the generator takes as little of the shared CPU as it can. Everything stays on 127.0.0.1 and
every phase is bounded in time.

Photos: the clothing-small test split from ../shared/datasets when present (same 10 classes as
the demo model, not used to train it), else the demo's validation and test photos. Model:
``--model`` (a run folder or .onnx file), else efficientnet_lite0 bottleneck trained on the demo
photos first (about a minute).

Usage::

    python bench/bench_serve.py [--model RUN_OR_ONNX] [--seconds 60] [--clients 32] [--photos DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "vitrina" / "demo" / "clothing"
SHARED_TEST = REPO.parent / "shared" / "datasets" / "clothing-small" / "test"
BOUNDARY = "vitrina-bench-boundary"
WARMUP_SECONDS = 5.0
# Offline prediction runs over at least this many files (copies of the photos) so that its
# start-up (decoding processes) weighs as little as in a long catalogue run.
OFFLINE_MIN_IMAGES = 1000


@dataclass
class Photo:
    path: Path
    label: str
    data: bytes


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # connection errors and the like

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def unexpected(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200) + len(self.failures)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


# ----------------------------------------------------------------------------- inputs
def find_photos(folder: Path | None) -> list[Photo]:
    if folder is not None:
        roots = [folder]
    elif SHARED_TEST.is_dir():
        roots = [SHARED_TEST]
    else:
        roots = [DEMO / "validation", DEMO / "test"]
    photos = []
    for root in roots:
        for path in sorted(root.glob("*/*.jpg")):
            photos.append(Photo(path, path.parent.name, path.read_bytes()))
    if not photos:
        raise SystemExit(f"no photos found in {', '.join(map(str, roots))} (expected CLASS/*.jpg)")
    return photos


def train_demo_model(folder: Path) -> Path:
    from vitrina import api
    from vitrina.config import resolve

    print("training efficientnet_lite0 (bottleneck) on the demo photos for the benchmark...", flush=True)
    overrides = {"train.mode": "bottleneck", "train.epochs": 30, "train.workers": 1, "train.cache_dir": str(folder / "cache")}
    run = api.train(DEMO, resolve(overrides=overrides), out=folder / "run", progress=False, log=lambda _: None)
    print(f"  {run.metrics['split']} accuracy {run.metrics['accuracy']:.3f}", flush=True)
    return run.run_dir


def cpu_seconds() -> float:
    """User + system seconds of this process and of the children it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def offline_throughput(model: Path, photos: list[Photo], folder: Path) -> tuple[float, int, str, float]:
    """Images/s of `vitrina predict` over copies of the photos (files on disk, CSV output), and its CPU seconds per photo."""
    from vitrina.api.prediction import predict

    copies = -(-OFFLINE_MIN_IMAGES // len(photos))
    images = folder / "images"
    for copy in range(copies):
        for i, photo in enumerate(photos):
            target = images / f"{copy}" / f"{i:05d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo.path, target)
    before = cpu_seconds()
    summary = predict(model, [images], out=folder / "predictions.csv", progress=False)
    cpu = (cpu_seconds() - before) / max(1, summary.n_predicted)
    return summary.images_per_second, summary.n_predicted, summary.backend, cpu


# ----------------------------------------------------------------------------- the server
class Server:
    """`python -m vitrina serve` in a child process on a free loopback port."""

    def __init__(self, model: Path, database: Path, extra: list[str]):
        command = [sys.executable, "-m", "vitrina", "serve", str(model), "--host", "127.0.0.1", "--port", "0",
                   "--db", str(database), "--reload-interval", "0", *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = self._wait_for_url(timeout=300)
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self._wait_until_ready(timeout=60)

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise SystemExit(f"the server exited before listening (exit code {self.process.wait()})")
            match = re.search(r"open (http://\S+/) in a browser", line)
            if match:
                return match.group(1).rstrip("/")
        raise SystemExit("the server did not start in time")

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the server did not become ready in time")

    def cpu_seconds(self) -> float:
        """User + system seconds the server process (all its threads) has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


# ----------------------------------------------------------------------------- the load
def check_request(port: int, photo: Photo) -> bytes:
    """The whole HTTP/1.1 request of one listing check, built once and reused."""
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\n{photo.label}\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{photo.path.name}\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode() + photo.data + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (
        f"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes, bool]:
    """Send one request, read one response: (status, body, server wants the connection closed)."""
    writer.write(request)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    status = int(head[9:12])
    length = int(re.search(r"content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    body = await reader.readexactly(length)
    return status, body, "connection: close" in head


async def preflight(port: int, request: bytes) -> None:
    """One check before the load: a model whose categories are not the photos' labels measures only 422s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, body, _ = await exchange(reader, writer, request)
    writer.close()
    if status != 200:
        raise SystemExit(f"the first check answered {status}: {body[:300]!r} (does --model know the photos' categories?)")


async def run_load(port: int, requests: list[bytes], clients: int, seconds: float) -> LoadResult:
    """``clients`` connections posting checks back to back for ``seconds``."""
    result = LoadResult(seconds)
    next_request = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        nonlocal next_request
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                request = requests[next_request % len(requests)]
                next_request += 1
                sent = time.perf_counter()
                try:
                    status, body, closing = await exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    result.failures.append(f"{type(exc).__name__}: {exc}")
                    closing, status = True, 0
                else:
                    result.latencies.append(time.perf_counter() - sent)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status == 200:
                        verdict = json.loads(body)["verdict"]
                        result.verdicts[verdict] = result.verdicts.get(verdict, 0) + 1
                if closing:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


def measure(model: Path, photos: list[Photo], folder: Path, name: str, extra: list[str], clients: int, seconds: float) -> tuple[LoadResult, float, float, float]:
    """Start a server, warm it up, load it for ``seconds``; (result, RSS before, RSS after, server CPU seconds per check)."""
    print(f"\n[{name}] starting the server ({' '.join(extra) or 'default settings'})...", flush=True)
    server = Server(model, folder / f"moderation-{name.replace(' ', '-')}.db", extra)
    try:
        requests = [check_request(server.port, photo) for photo in photos]
        asyncio.run(preflight(server.port, requests[0]))
        asyncio.run(run_load(server.port, requests, clients, WARMUP_SECONDS))
        before = server.rss_mb()
        cpu_before, server_before = os.times(), server.cpu_seconds()
        result = asyncio.run(run_load(server.port, requests, clients, seconds))
        cpu_after, server_after = os.times(), server.cpu_seconds()
        after = server.rss_mb()
    finally:
        server.stop()
    generator_cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    print(f"  {result.ok} checks in {result.seconds:.1f} s = {result.rate:.1f} checks/s; "
          f"latency p50 {result.percentile(50):.0f} ms, p99 {result.percentile(99):.0f} ms")
    print(f"  unexpected answers: {result.unexpected} (statuses {dict(sorted(result.statuses.items()))}"
          f"{', ' + result.failures[0] if result.failures else ''})")
    print(f"  verdicts: {dict(sorted(result.verdicts.items()))}")
    print(f"  server memory (VmRSS): {before:.0f} MB after warm-up, {after:.0f} MB after the load ({after - before:+.1f} MB)")
    per_check = (server_after - server_before) / max(1, result.ok)
    print(f"  server CPU: {server_after - server_before:.1f} s = {per_check * 1000:.2f} CPU-ms per check; "
          f"load generator CPU: {generator_cpu:.1f} s ({generator_cpu / result.seconds * 100:.0f}% of one core)")
    return result, before, after, per_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="run folder or .onnx file (default: train one on the demo photos)")
    parser.add_argument("--photos", type=Path, help="folder of CLASS/*.jpg photos (default: clothing-small test, else the demo's)")
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per server setting (default 60)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vitrina-bench-serve-") as tmp:
        folder = Path(tmp)
        print(load_average())
        model = args.model or train_demo_model(folder)
        photos = find_photos(args.photos)
        print(f"model: {model}")
        print(f"photos: {len(photos)} from {photos[0].path.parent.parent}, {np.mean([len(p.data) for p in photos]) / 1024:.0f} KB on average")

        offline_before, n_offline, backend, cpu_before = offline_throughput(model, photos, folder / "before")
        print(f"\noffline `vitrina predict` ({backend}): {n_offline} images at {offline_before:.1f} images/s, {cpu_before * 1000:.2f} CPU-ms per photo")

        on, on_before, on_after, on_cpu = measure(model, photos, folder, "micro-batching on", [], args.clients, args.seconds)
        off, _, _, _ = measure(model, photos, folder, "micro-batching off", ["--max-batch", "1"], args.clients, args.seconds)

        # Measured again after the servers: other work on the machine changes its speed over a run.
        offline_after, _, _, cpu_after = offline_throughput(model, photos, folder / "after")
        offline, offline_cpu = (offline_before + offline_after) / 2, (cpu_before + cpu_after) / 2
        print(f"\noffline `vitrina predict` again: {offline_after:.1f} images/s, {cpu_after * 1000:.2f} CPU-ms per photo "
              f"(mean of both: {offline:.1f} images/s, {offline_cpu * 1000:.2f} CPU-ms per photo)")

        print("\nsummary")
        print(f"  {args.clients} clients, {args.seconds:g} s per setting, {load_average()}")
        print(f"  micro-batching on : {on.rate:7.1f} checks/s, p50 {on.percentile(50):5.0f} ms, p99 {on.percentile(99):5.0f} ms, "
              f"{on.unexpected} unexpected answers")
        print(f"  micro-batching off: {off.rate:7.1f} checks/s, p50 {off.percentile(50):5.0f} ms, p99 {off.percentile(99):5.0f} ms, "
              f"{off.unexpected} unexpected answers")
        print(f"  on / off throughput: {on.rate / off.rate:.2f}x")
        print(f"  server (batching on) / offline `vitrina predict` (mean of the runs before and after): "
              f"{on.rate:.1f} / {offline:.1f} = {on.rate / offline:.2f} (target >= 0.7)")
        ratio = on_cpu / offline_cpu
        print(f"  [{'met' if ratio <= 1.3 else 'NOT MET'}] server CPU per check / offline CPU per photo: "
              f"{on_cpu * 1000:.2f} / {offline_cpu * 1000:.2f} ms = {ratio:.2f} (target <= 1.3)")
        print(f"  server memory during the batching-on load: {on_before:.0f} -> {on_after:.0f} MB ({on_after - on_before:+.1f} MB)")


if __name__ == "__main__":
    main()
