"""Run a command and measure what it costs: wall time, CPU seconds, peak memory of its largest
process and of its whole process tree (VmRSS sampled from /proc), and memory over time."""
from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def tree_rss(root: int) -> tuple[float, float]:
    """(largest process, whole tree) resident memory in MB of ``root`` and its descendants."""
    tree, stack, sizes = _children(), [root], []
    while stack:
        pid = stack.pop()
        sizes.append(_rss_mb(pid))
        stack.extend(tree.get(pid, []))
    return max(sizes, default=0.0), sum(sizes)


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    wall: float
    cpu: float  # user + system seconds of the command and every process it waited for
    peak_process_mb: float
    peak_tree_mb: float
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, largest MB, tree MB)


def measure(cmd: list[str], env: dict | None = None, interval: float = 0.1, on_sample=None) -> Measured:  # type: ignore[no-untyped-def]
    """Run ``cmd`` to the end, sampling the memory of its process tree every ``interval`` seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    samples: list[tuple[float, float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            largest, whole = tree_rss(proc.pid)
            samples.append((time.perf_counter() - started, largest, whole))
            if on_sample is not None:
                on_sample(samples[-1])
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(proc.returncode, stdout, stderr, wall, cpu, max((s[1] for s in samples), default=0.0),
                    max((s[2] for s in samples), default=0.0), samples)
