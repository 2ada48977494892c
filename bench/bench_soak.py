"""`vitrina serve` under long load, and under a decode-cost attack.

From one run it prints:

- soak: ``--clients`` (32) connections posting real photos to /v1/check for ``--minutes`` (10): checks/s,
  p50/p99 latency, answers by status (anything but 200, 429 or 503 is unexpected), and the
  server's memory (VmRSS, sampled every second) after the first minute and at the end;
- attack: a few ordinary clients posting checks, first alone, then beside four connections each
  posting listings of highly compressible 6,300 x 6,300 PNGs (about 120 KB each, just under
  the pixel limit), ten per listing, then one per listing: the ordinary checks' p50 with each
  attack against without it.

The server is the real command (``python -m vitrina serve MODEL``) in its own process, on
127.0.0.1. Model: ``--model`` (a run folder or .onnx file), else efficientnet_lite0 bottleneck
trained on the demo photos first.

    python bench/bench_soak.py [--model RUN_OR_ONNX] [--minutes 10] [--clients 32] [--attack-seconds 60]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_serve import (
    BOUNDARY,
    LoadResult,
    Server,
    check_request,
    find_photos,
    preflight,
    run_load,
    train_demo_model,
)
from PIL import Image

EXPECTED = {200, 429, 503}
ATTACK_SIDE = 6_300
ATTACK_PHOTOS = 10
ATTACK_CONNECTIONS = 4
ORDINARY_CLIENTS = 4


def attack_request(port: int, category: str, photos: int) -> bytes:
    """One listing of ``photos`` large, highly compressible PNGs (built once, reused)."""
    buffer = io.BytesIO()
    Image.new("RGB", (ATTACK_SIDE, ATTACK_SIDE), (200, 200, 200)).save(buffer, format="PNG", optimize=True)
    png = buffer.getvalue()
    parts = [f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\n{category}\r\n".encode()]
    for i in range(photos):
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big{i}.png\"\r\n"
                     f"Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n")
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    head = (f"POST /v1/check HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    print(f"attack listing: {photos} PNG(s) of {ATTACK_SIDE} x {ATTACK_SIDE}, {len(png) / 1024:.0f} KB each")
    return head + body


async def sample_memory(server: Server, seconds: float, samples: list[tuple[float, float]]) -> None:
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        samples.append((time.perf_counter() - started, server.rss_mb()))
        await asyncio.sleep(1.0)


async def soak(server: Server, requests: list[bytes], clients: int, seconds: float) -> tuple[LoadResult, list[tuple[float, float]]]:
    samples: list[tuple[float, float]] = []
    result, _ = await asyncio.gather(run_load(server.port, requests, clients, seconds), sample_memory(server, seconds, samples))
    return result, samples


async def under_attack(port: int, requests: list[bytes], attack: bytes, seconds: float) -> tuple[LoadResult, LoadResult]:
    return await asyncio.gather(run_load(port, requests, ORDINARY_CLIENTS, seconds), run_load(port, [attack], ATTACK_CONNECTIONS, seconds))


def describe(name: str, result: LoadResult) -> None:
    unexpected = sum(n for status, n in result.statuses.items() if status not in EXPECTED) + len(result.failures)
    print(f"[{name}] {result.ok} checks in {result.seconds:.0f} s = {result.rate:.1f} checks/s; p50 {result.percentile(50):.0f} ms, "
          f"p99 {result.percentile(99):.0f} ms; statuses {dict(sorted(result.statuses.items()))}; unexpected {unexpected}"
          + (f" ({result.failures[0]})" if result.failures else ""))


def run_soak(server: Server, requests: list[bytes], clients: int, minutes: float) -> list[tuple[bool, str]]:
    """The long load; its checks as (met, line)."""
    result, samples = asyncio.run(soak(server, requests, clients, minutes * 60))
    describe(f"soak, {clients} clients, {minutes:g} min", result)
    first = float(np.median([rss for t, rss in samples if 50 <= t <= 70] or [samples[0][1]]))
    end = float(np.median([rss for _, rss in samples[-10:]]))
    print(f"  server memory: {first:.0f} MB after the first minute, {end:.0f} MB at the end ({end / first - 1:+.1%}); "
          f"peak {max(rss for _, rss in samples):.0f} MB")
    unexpected = sum(n for status, n in result.statuses.items() if status not in EXPECTED) + len(result.failures)
    return [(unexpected == 0, f"soak: {unexpected} unexpected answers (anything but 200, 429, 503)"),
            (abs(end / first - 1) <= 0.10, (f"soak: memory at the end within 10% of after the first minute "
             f"({first:.0f} -> {end:.0f} MB); p99 {result.percentile(99):.0f} ms"))]


def run_attacks(server: Server, requests: list[bytes], category: str, seconds: float) -> list[tuple[bool, str]]:
    """Ordinary checks alone, then beside each attack; their p50 against the quiet one."""
    quiet = asyncio.run(run_load(server.port, requests, ORDINARY_CLIENTS, seconds))
    describe(f"{ORDINARY_CLIENTS} ordinary clients alone", quiet)
    checks = []
    # ten photos per listing (refused whole: more pixels than the decode budget), then one per
    # listing (admitted, four in flight fill the budget): the second is the harder one
    for photos in (ATTACK_PHOTOS, 1):
        attack = attack_request(server.port, category, photos)
        ordinary, attacked = asyncio.run(under_attack(server.port, requests, attack, seconds))
        describe(f"{ORDINARY_CLIENTS} ordinary clients beside the attack", ordinary)
        describe(f"{ATTACK_CONNECTIONS} attack connections (413 and 503 are the defence)", attacked)
        ratio = ordinary.percentile(50) / quiet.percentile(50)
        checks.append((ratio <= 2.0, (f"attack of {photos} PNG(s) per listing: ordinary p50 {ordinary.percentile(50):.0f} ms "
                       f"beside it against {quiet.percentile(50):.0f} ms alone = {ratio:.2f}x (at most 2x)")))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--minutes", type=float, default=10.0, help="soak length (0: the attacks only)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--attack-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitrina-bench-soak-") as tmp:
        folder = Path(tmp)
        model = args.model or train_demo_model(folder)
        photos = find_photos(args.photos)
        server = Server(model, folder / "moderation.db", [])
        try:
            requests = [check_request(server.port, photo) for photo in photos]
            asyncio.run(preflight(server.port, requests[0]))
            checks = run_soak(server, requests, args.clients, args.minutes) if args.minutes > 0 else []
            checks += run_attacks(server, requests, photos[0].label, args.attack_seconds)
        finally:
            server.stop()
        print("summary")
        for met, line in checks:
            print(f"  [{'met' if met else 'NOT MET'}] {line}")
        one, five, _ = os.getloadavg()
        print(f"  load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
