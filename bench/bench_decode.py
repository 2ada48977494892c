"""Decode throughput of the dataset layer on the Freiburg grocery photos.

Measures, in one run and on warm file caches, images per second for:

- PIL's plain ``Image.open(path).convert("RGB")`` (the baseline),
- ``vitrina.data.images.decode`` to RGB (EXIF orientation, mode handling, safety checks),
- ``decode`` plus ``Preprocess(input_size=224).to_uint8`` (what training and prediction do),

each in 1 process and in 2 processes. Usage::

    python bench/bench_decode.py [--limit N] [--repeat R]
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from vitrina.data.images import decode
from vitrina.preprocess import Preprocess

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "freiburg-groceries" / "images"
PREPROCESS = Preprocess(input_size=224)


def pil_open_convert(path: str) -> None:
    with Image.open(path) as img:
        img.convert("RGB")


def vitrina_decode(path: str) -> None:
    decode(path)


def vitrina_decode_preprocess(path: str) -> None:
    img = decode(path, mode=PREPROCESS.mode, draft_size=PREPROCESS.draft_size())
    PREPROCESS.to_uint8(img)


CASES: list[tuple[str, Callable[[str], None]]] = [
    ("PIL open + convert RGB (baseline)", pil_open_convert),
    ("vitrina decode -> RGB", vitrina_decode),
    ("vitrina decode + preprocess 224", vitrina_decode_preprocess),
]


def images_per_second(work: Callable[[str], None], paths: list[str], pool: multiprocessing.pool.Pool | None) -> float:
    start = time.perf_counter()
    if pool is None:
        for path in paths:
            work(path)
    else:
        chunk = max(1, min(64, len(paths) // 32))
        for _ in pool.imap_unordered(work, paths, chunksize=chunk):
            pass
    return len(paths) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N images (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="keep the best of R timings per case")
    args = parser.parse_args()
    if not IMAGES.is_dir():
        print(f"Freiburg images not found at {IMAGES}; nothing to measure.")
        return 0
    paths = [str(p) for p in sorted(IMAGES.glob("*/*.jpg"))[: args.limit]]
    if not paths:
        print(f"No JPEG files under {IMAGES}; nothing to measure.")
        return 0
    total_bytes = sum(Path(p).stat().st_size for p in paths)  # also warms the file cache
    for path in paths:
        Path(path).read_bytes()
    print(f"{len(paths):,} images from {IMAGES} ({total_bytes / len(paths) / 1024:.1f} KiB on average)")

    rates: dict[tuple[str, int], float] = {}
    with multiprocessing.Pool(2) as pool:
        for _ in range(args.repeat):
            for name, work in CASES:
                for processes, runner in ((1, None), (2, pool)):
                    rate = images_per_second(work, paths, runner)
                    rates[name, processes] = max(rate, rates.get((name, processes), 0.0))

    baseline = CASES[0][0]
    print(f"\n{'case':<36}{'1 process':>12}{'vs PIL':>8}{'2 processes':>14}{'vs PIL':>8}{'2 vs 1':>8}")
    for name, _ in CASES:
        one, two = rates[name, 1], rates[name, 2]
        print(
            f"{name:<36}{one:>8,.0f} i/s{one / rates[baseline, 1]:>7.2f}x"
            f"{two:>10,.0f} i/s{two / rates[baseline, 2]:>7.2f}x{two / one:>7.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
