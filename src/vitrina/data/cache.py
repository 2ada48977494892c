"""The decoded-image cache: every image decoded and resized once, reused by every stage.

:func:`decode_samples` decodes and resizes every image once (in worker processes) into one
uint8 array, stored on disk as a memory-mapped ``.npy`` keyed by the files' identity and the
preprocessing, so later epochs, later runs and evaluations never decode a JPEG again.

:func:`cache_entries` and :func:`prune_cache` look after all of vitrina's caches (decoded images,
frozen features, exported graphs): what they hold and removing what no run has used lately.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from vitrina.data.images import open_sample
from vitrina.data.samples import Sample
from vitrina.errors import ImageError, VitrinaError
from vitrina.preprocess import Preprocess


def default_cache_dir(configured: str | None = None) -> Path:
    if configured:
        return Path(configured)
    env = os.environ.get("VITRINA_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitrina"


def digest(*parts: object) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode() if not isinstance(part, bytes) else part)
        h.update(b"\0")
    return h.hexdigest()


def sample_identity(sample: Sample) -> tuple:
    """Cheap identity of a sample's bytes (path, size, mtime), or its pixels' hash."""
    if sample.pixels is not None:
        return (sample.path, hashlib.blake2b(sample.pixels.tobytes(), digest_size=12).hexdigest())
    try:
        st = os.stat(sample.path)
        return (sample.path, st.st_size, st.st_mtime_ns)
    except OSError:
        return (sample.path, None)


@dataclass
class DecodedImages:
    """Resized uint8 images (NxHxWxC, memory-mapped) for the readable samples.

    ``index`` maps each kept row to its position in the original sample list; ``hashes`` are
    the images' content hashes; ``skipped`` lists ``{path, reason}`` for unreadable files.
    """

    images: np.ndarray
    index: np.ndarray
    hashes: list[str]
    skipped: list[dict]


def _decode_task(args: tuple[Sample, Preprocess, int | None]) -> tuple[np.ndarray | None, str, str | None]:
    sample, preprocess, max_pixels = args
    try:
        if sample.pixels is not None:
            content = sample.pixels.tobytes()
        else:
            with open(sample.path, "rb") as fh:
                content = fh.read()
        content_hash = hashlib.blake2b(content, digest_size=16).hexdigest()
        img = open_sample(sample, preprocess.mode, max_pixels, draft_size=preprocess.draft_size())
        return preprocess.to_uint8(img), content_hash, None
    except ImageError as exc:
        return None, "", exc.reason
    except OSError as exc:
        return None, "", f"cannot read file: {exc.strerror or exc}"


def decode_samples(
    samples: Sequence[Sample],
    preprocess: Preprocess,
    cache_dir: str | Path | None,
    *,
    max_pixels: int | None = None,
    workers: int = 2,
    progress: bool = True,
    desc: str = "decoding",
) -> DecodedImages:
    """Decode + resize every sample once; reuse the on-disk cache when nothing changed."""
    key = digest("decoded-v1", preprocess.to_dict(), max_pixels, [sample_identity(s) for s in samples])
    folder = Path(cache_dir) / "decoded" / key if cache_dir is not None else None
    if folder is not None and (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        touch_entry(folder / "meta.json")
        images = np.load(folder / "images.npy", mmap_mode="r")
        return DecodedImages(images, np.asarray(meta["index"], dtype=np.int64), meta["hashes"], meta["skipped"])

    size, channels = preprocess.input_size, preprocess.channels
    n = len(samples)
    tmp_folder = None
    if folder is not None:
        tmp_folder = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp_folder.mkdir(parents=True, exist_ok=True)
        buffer = np.lib.format.open_memmap(tmp_folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, channels))
    else:
        buffer = np.empty((n, size, size, channels), dtype=np.uint8)

    kept: list[int] = []
    hashes: list[str] = []
    skipped: list[dict] = []
    tasks = ((s, preprocess, max_pixels) for s in samples)
    in_memory = all(s.pixels is not None for s in samples)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)
    if workers > 1 and not in_memory and n > 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_decode_task, tasks, chunksize=32)
            _collect(results, samples, buffer, kept, hashes, skipped, bar)
    else:
        _collect(map(_decode_task, tasks), samples, buffer, kept, hashes, skipped, bar)
    bar.close()

    # Rows of unreadable files are dropped by compacting in place (kept rows only move down).
    for row, original in enumerate(kept):
        if row != original:
            buffer[row] = buffer[original]
    index = np.asarray(kept, dtype=np.int64)
    if folder is None:
        return DecodedImages(buffer[: len(kept)], index, hashes, skipped)

    buffer.flush()
    del buffer
    if len(kept) != n:
        full = np.load(tmp_folder / "images.npy", mmap_mode="r")
        compact = np.lib.format.open_memmap(tmp_folder / "images.part.npy", mode="w+", dtype=np.uint8, shape=(len(kept), size, size, channels))
        compact[:] = full[: len(kept)]
        compact.flush()
        del full, compact
        os.replace(tmp_folder / "images.part.npy", tmp_folder / "images.npy")
    (tmp_folder / "meta.json").write_text(json.dumps({"index": kept, "hashes": hashes, "skipped": skipped}))
    try:
        os.replace(tmp_folder, folder)
    except OSError:  # another process filled the same cache entry first
        shutil.rmtree(tmp_folder, ignore_errors=True)
    images = np.load(folder / "images.npy", mmap_mode="r")
    return DecodedImages(images, index, hashes, skipped)


def _collect(results, samples, buffer, kept, hashes, skipped, bar) -> None:  # type: ignore[no-untyped-def]
    for i, (array, content_hash, reason) in enumerate(results):
        if array is None:
            skipped.append({"path": samples[i].path, "reason": reason})
        else:
            buffer[i] = array
            kept.append(i)
            hashes.append(content_hash)
        bar.update(1)


# ----------------------------------------------------------------------------- maintenance
# Every cache lives in one of these folders of the cache directory, one entry (a file or a
# folder) per decoded dataset, feature set or exported graph. An entry is "used" when a run
# reads it (see touch_entry), so pruning removes what no run has needed for longest.
CACHE_KINDS = ("decoded", "features", "onnx")
UNFINISHED_GRACE_SECONDS = 24 * 3600  # entries still being written (".tmp") are left alone this long


@dataclass
class CacheEntry:
    kind: str  # decoded, features or onnx
    path: Path
    size: int  # bytes
    last_used: float  # seconds since the epoch


def touch_entry(path: str | Path) -> None:
    """Record that a cache entry was just used (its file's modification time), best effort."""
    try:
        os.utime(path)
    except OSError:
        pass


def _entry(kind: str, path: Path) -> CacheEntry:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    size = sum(s.st_size for s in stats)
    last_used = max((s.st_mtime for s in stats), default=path.stat().st_mtime)
    return CacheEntry(kind, path, size, last_used)


def cache_entries(cache_dir: str | Path | None = None) -> list[CacheEntry]:
    """Every entry of the caches under ``cache_dir`` (default: :func:`default_cache_dir`), oldest use first."""
    root = default_cache_dir(str(cache_dir) if cache_dir is not None else None)
    entries = []
    for kind in CACHE_KINDS:
        folder = root / kind
        if folder.is_dir():
            entries.extend(_entry(kind, path) for path in folder.iterdir())
    return sorted(entries, key=lambda e: e.last_used)


def prune_cache(
    cache_dir: str | Path | None = None,
    *,
    older_than_days: float | None = None,
    max_bytes: int | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[CacheEntry]:
    """Remove cache entries unused for ``older_than_days``, then the least recently used ones until
    the caches hold at most ``max_bytes``. Returns what was (or, with ``dry_run``, would be) removed.

    Only entries inside the cache folders are ever touched; an entry still being written by a
    running job (a ".tmp" name younger than a day) is kept.
    """
    if older_than_days is None and max_bytes is None:
        raise VitrinaError("say what to prune: an age (--older-than DAYS) and/or a size limit (--max-size GB)")
    if (older_than_days is not None and older_than_days < 0) or (max_bytes is not None and max_bytes < 0):
        raise VitrinaError("the age and size limits of a cache prune cannot be negative")
    now = time.time() if now is None else now
    entries = cache_entries(cache_dir)
    candidates = [e for e in entries if not (".tmp" in e.path.name and now - e.last_used < UNFINISHED_GRACE_SECONDS)]
    too_old = older_than_days * 86400 if older_than_days is not None else float("inf")
    doomed = [e for e in candidates if now - e.last_used > too_old]
    if max_bytes is not None:
        total = sum(e.size for e in entries) - sum(e.size for e in doomed)
        for e in candidates[len(doomed):]:  # least recently used first; the too-old ones lead the list
            if total <= max_bytes:
                break
            doomed.append(e)
            total -= e.size
    if not dry_run:
        for e in doomed:
            if e.path.is_dir():
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                e.path.unlink(missing_ok=True)
    return doomed
