"""Decode throughput of the dataset layer, by default on the Freiburg grocery photos.

Measures, in one run and on warm file caches, images per second for:

- PIL's plain ``Image.open(path).convert("RGB")`` (the baseline),
- the decoder as it was before strict JPEG decoding (plain PIL with draft mode, kept here only
  for this comparison) and ``vitrina.data.images.decode`` (strict JPEG decoding), to RGB,
- both decoders plus ``Preprocess(input_size=224).to_uint8`` (what training and prediction do),

each in 1 process and in 2 processes. The cases are interleaved block by block (a block of
images through every case, in an order that alternates) so that a busy, noisy machine slows them
alike; the ratio new / before is printed both from total times and as the median of per-block
ratios. Usage::

    python bench/bench_decode.py [--images DIR] [--limit N] [--repeat R] [--block B]
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import ExifTags, Image, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from vitrina.data import images
from vitrina.data.images import decode
from vitrina.preprocess import Preprocess

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "freiburg-groceries" / "images"
PREPROCESS = Preprocess(input_size=224)


def decode_before(path: str, mode: str = "RGB", draft_size: tuple[int, int] | None = None) -> Image.Image:
    """The decoder before strict JPEG decoding (plain PIL), for this comparison only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            width, height = img.size
            if width * height > images.DEFAULT_MAX_PIXELS:
                raise ValueError("too many pixels")
            if draft_size is not None and isinstance(img, JpegImageFile):
                if img.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
                    draft_size = (draft_size[1], draft_size[0])
                img.draft("RGB" if mode == "RGB" else "L", draft_size)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return images._to_mode(img, mode)


def pil_open_convert(path: str) -> None:
    with Image.open(path) as img:
        img.convert("RGB")


def before_decode(path: str) -> None:
    decode_before(path)


def vitrina_decode(path: str) -> None:
    decode(path)


def before_decode_preprocess(path: str) -> None:
    PREPROCESS.to_uint8(decode_before(path, mode=PREPROCESS.mode, draft_size=PREPROCESS.draft_size()))


def vitrina_decode_preprocess(path: str) -> None:
    img = decode(path, mode=PREPROCESS.mode, draft_size=PREPROCESS.draft_size())
    PREPROCESS.to_uint8(img)


CASES: list[tuple[str, Callable[[str], None]]] = [
    ("PIL open + convert RGB (baseline)", pil_open_convert),
    ("before: PIL decode -> RGB", before_decode),
    ("vitrina decode -> RGB", vitrina_decode),
    ("before: PIL decode + preprocess 224", before_decode_preprocess),
    ("vitrina decode + preprocess 224", vitrina_decode_preprocess),
]
# (before, new) pairs whose ratio is reported.
PAIRS = [(1, 2), (3, 4)]


def time_block(task: tuple[int, list[str]]) -> list[float]:
    """Seconds each case takes on one block of images; the case order alternates between blocks."""
    index, paths = task
    order = list(range(len(CASES)))
    if index % 2:
        order.reverse()
    seconds = [0.0] * len(CASES)
    for case in order:
        work = CASES[case][1]
        start = time.perf_counter()
        for path in paths:
            work(path)
        seconds[case] = time.perf_counter() - start
    return seconds


def measure(blocks: list[list[str]], pool: multiprocessing.pool.Pool | None) -> list[list[float]]:
    """Per-block seconds for every case, in 1 process (``pool`` None) or in the pool's processes."""
    tasks = list(enumerate(blocks))
    if pool is None:
        return [time_block(task) for task in tasks]
    return list(pool.imap_unordered(time_block, tasks))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=IMAGES, help="folder of .jpg files (searched recursively)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="run every block R times")
    parser.add_argument("--block", type=int, default=20, help="images per interleaved block")
    args = parser.parse_args()
    if not args.images.is_dir():
        print(f"Images not found at {args.images}; nothing to measure.")
        return 0
    paths = [str(p) for p in sorted(args.images.rglob("*.jpg"))[: args.limit]]
    if not paths:
        print(f"No JPEG files under {args.images}; nothing to measure.")
        return 0
    total_bytes = sum(Path(p).stat().st_size for p in paths)  # also warms the file cache
    for path in paths:
        Path(path).read_bytes()
    print(f"{len(paths):,} images from {args.images} ({total_bytes / len(paths) / 1024:.1f} KiB on average)")
    blocks = [paths[i : i + args.block] for i in range(0, len(paths), args.block)] * args.repeat
    images_timed = len(paths) * args.repeat

    results: dict[int, list[list[float]]] = {}
    with multiprocessing.Pool(2) as pool:
        for processes, runner in ((1, None), (2, pool)):
            measure(blocks[:2], runner)  # warm-up: imports, first-call set-up, caches
            results[processes] = measure(blocks, runner)

    def rate(processes: int, case: int) -> float:  # images per second of the processes together
        return processes * images_timed / sum(block[case] for block in results[processes])

    print(f"\n{'case':<38}{'1 process':>12}{'vs PIL':>8}{'2 processes':>14}{'vs PIL':>8}")
    for case, (name, _) in enumerate(CASES):
        one, two = rate(1, case), rate(2, case)
        print(f"{name:<38}{one:>8,.0f} i/s{one / rate(1, 0):>7.2f}x{two:>10,.0f} i/s{two / rate(2, 0):>7.2f}x")
    print("\nnew / before throughput (>1: the new decoder is faster); total times, median of per-block ratios")
    for before, new in PAIRS:
        label = CASES[new][0].removeprefix("vitrina ")
        cells = []
        for processes in (1, 2):
            median = statistics.median(block[before] / block[new] for block in results[processes])
            cells.append(f"{processes} process{'es' if processes > 1 else '':<2} {rate(processes, new) / rate(processes, before):.3f}x "
                         f"(median {median:.3f}x)")
        print(f"  {label:<26}" + "   ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
