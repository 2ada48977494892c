"""Two `vitrina serve` replicas on one PostgreSQL moderation log, against one replica.

A real PostgreSQL server (initdb + pg_ctl in a temporary folder, as the test suite starts it)
holds the log. First one replica takes ``--clients`` (32) clients posting real photos to
/v1/check for ``--seconds`` (60); then two replicas on one log take the same clients split
between them, while a reader follows the log with ``?after=``. It prints checks/s of both, and
checks that the log's rows equal the 200 answers and that the reader saw every check id once,
none missed.

    python bench/bench_replicas.py --model RUN_OR_ONNX --photos CLASS_FOLDERS [--seconds 60] [--clients 32]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from bench_serve import LoadResult, Server, check_request, exchange, find_photos, preflight, run_load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serving.postgres import PostgresServer, find_postgres  # noqa: E402 - the suite's PostgreSQL helper


async def follow(port: int, seen: list[int], done: asyncio.Event) -> None:
    """Page through the log with ?after= while it is written, then once more after the load."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    after = 0
    try:
        while True:
            finished = done.is_set()
            request = f"GET /v1/checks?after={after}&limit=500 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            status, body, _ = await exchange(reader, writer, request)
            page = json.loads(body)
            seen.extend(check["id"] for check in page["checks"])
            after = page["next_after"]
            if finished and not page["checks"]:
                return
            await asyncio.sleep(0.05)
    finally:
        writer.close()


async def two_replicas(servers: list[Server], requests: list[list[bytes]], clients: int, seconds: float,
                       seen: list[int]) -> list[LoadResult]:
    done = asyncio.Event()
    follower = asyncio.create_task(follow(servers[0].port, seen, done))
    loads = await asyncio.gather(*(run_load(s.port, r, clients // 2, seconds) for s, r in zip(servers, requests)))
    done.set()
    await follower
    return list(loads)


def count_rows(url: str) -> tuple[int, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as connection:
        total, distinct = connection.execute(text("SELECT count(*), count(DISTINCT id) FROM checks")).one()
    engine.dispose()
    return int(total), int(distinct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--photos", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    binaries, why = find_postgres()
    if binaries is None:
        raise SystemExit(f"no PostgreSQL server can run here: {why}")
    postgres = PostgresServer(binaries)
    photos = find_photos(args.photos)
    try:
        single_url = postgres.database()
        server = Server(args.model, single_url, [])  # type: ignore[arg-type]
        try:
            requests = [check_request(server.port, photo) for photo in photos]
            asyncio.run(preflight(server.port, requests[0]))
            single = asyncio.run(run_load(server.port, requests, args.clients, args.seconds))
        finally:
            server.stop()
        print(f"[one replica] {single.rate:.1f} checks/s, p50 {single.percentile(50):.0f} ms, p99 {single.percentile(99):.0f} ms, "
              f"statuses {single.statuses}", flush=True)

        shared_url = postgres.database()
        servers = [Server(args.model, shared_url, []) for _ in range(2)]  # type: ignore[arg-type]
        seen: list[int] = []
        try:
            per_server = [[check_request(s.port, photo) for photo in photos] for s in servers]
            loads = asyncio.run(two_replicas(servers, per_server, args.clients, args.seconds, seen))
        finally:
            for s in servers:
                s.stop()
        answered = sum(load.ok for load in loads)
        rate = sum(load.rate for load in loads)
        print(f"[two replicas, one log] {rate:.1f} checks/s ({' + '.join(f'{load.rate:.1f}' for load in loads)}), "
              f"statuses {[load.statuses for load in loads]}", flush=True)
        rows, distinct = count_rows(shared_url)
    finally:
        postgres.remove()
    print("summary")
    print(f"  [{'met' if rows == distinct == answered else 'NOT MET'}] rows in the log {rows} ({distinct} distinct ids) = "
          f"200 answers {answered}")
    print(f"  [{'met' if len(seen) == len(set(seen)) == rows else 'NOT MET'}] the follower saw {len(set(seen))} ids, "
          f"{len(seen) - len(set(seen))} twice, {rows - len(set(seen))} missed")
    print(f"  two replicas {rate:.1f} checks/s against one {single.rate:.1f} ({rate / single.rate:.2f}x) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
