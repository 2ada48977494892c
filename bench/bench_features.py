"""Frozen-feature extraction speed: efficientnet_lite0 at 224 px on the Freiburg grocery photos,
end to end from JPEG files, against the naive loop.

Prints images/s, every figure measured in this one run (ratios are what to compare on a shared
machine):

- naive: PIL open + torchvision Resize/CenterCrop/ToTensor/Normalize + eager PyTorch fp32
  ``forward_features``, one batch of 32 at a time (the first ``--naive-images`` photos);
- vitrina, cold: what `vitrina train --mode bottleneck` does with a new dataset and an empty
  cache: decode every photo with worker processes into the decoded-image cache, then run the
  frozen backbone through ONNX Runtime (its graph exported on the way, once per backbone);
- vitrina, graph cached: the same on a fresh decoded-image cache with the backbone's graph
  already exported (a new dataset for a backbone used before);
- vitrina, decoded: the backbone alone on the decoded images (a second run: what the feature
  cache saves is this).

Loading the pretrained weights is not timed.

    python bench/bench_features.py [--limit N] [--naive-images N] [--size 224]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "datasets" / "freiburg-groceries" / "images"


def naive_features(model, paths: list[str], size: int, batch_size: int = 32) -> float:
    """Images/s of the obvious loop: PIL + torchvision transforms + eager PyTorch, batch by batch."""
    import torch
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(round(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]])
            model.forward_features(batch)
    return len(paths) / (time.perf_counter() - started)


def vitrina_features(model, samples, preprocess, cache: Path, workers: int) -> tuple[float, float, int]:
    """Seconds to decode ``samples`` into ``cache``, seconds for their features, and the feature count."""
    import torch

    from vitrina.data.cache import decode_samples
    from vitrina.models.unknown import penultimate_features

    started = time.perf_counter()
    decoded = decode_samples(samples, preprocess, cache, workers=workers, progress=False)
    decoded_at = time.perf_counter()
    features = penultimate_features(model, decoded.images, preprocess, torch.device("cpu"), "fp32", cache)
    done = time.perf_counter()
    return decoded_at - started, done - decoded_at, len(features)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N photos (default: all 4,947)")
    parser.add_argument("--naive-images", type=int, default=320, help="photos timed in the naive loop (default 320)")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels (default 224)")
    args = parser.parse_args()
    if not IMAGES.is_dir():
        print(f"Freiburg images not found at {IMAGES} (../shared/datasets is absent); nothing to measure.")
        return 0
    paths = [str(p) for p in sorted(IMAGES.glob("*/*.jpg"))[: args.limit]]
    if not paths:
        print(f"No JPEG files under {IMAGES}; nothing to measure.")
        return 0

    import torch

    from vitrina.data.samples import Sample
    from vitrina.models.registry import create_model, default_preprocess

    model = create_model("efficientnet_lite0", num_classes=25, input_size=args.size).eval()
    preprocess = default_preprocess("efficientnet_lite0", input_size=args.size, resize="center_crop")
    samples = [Sample(path=p, label=Path(p).parent.name) for p in paths]
    workers = min(4, os.cpu_count() or 1)  # what `vitrina train` uses with train.workers = -1
    print(f"efficientnet_lite0 frozen features, {args.size} px, {len(paths)} Freiburg photos, "
          f"{torch.get_num_threads()} threads, {workers} decoding processes")

    naive = naive_features(model, paths[: args.naive_images], args.size)
    print(f"  naive loop (PIL + torchvision + eager fp32), {min(len(paths), args.naive_images)} photos: {naive:.1f} images/s")

    with tempfile.TemporaryDirectory(prefix="vitrina-bench-") as work:
        cold_cache, warm_cache = Path(work) / "cold", Path(work) / "graph"
        decode_s, feature_s, n = vitrina_features(model, samples, preprocess, cold_cache, workers)
        cold = n / (decode_s + feature_s)
        print(f"  vitrina, cold cache: {cold:.1f} images/s end to end = {cold / naive:.1f}x naive "
              f"(decode {n / decode_s:.0f} images/s, {decode_s:.1f} s; features with the graph export {feature_s:.1f} s)")
        shutil.copytree(cold_cache / "onnx", warm_cache / "onnx")
        decode_s, feature_s, n = vitrina_features(model, samples, preprocess, warm_cache, workers)
        graph = n / (decode_s + feature_s)
        print(f"  vitrina, graph cached: {graph:.1f} images/s end to end = {graph / naive:.1f}x naive "
              f"(decode {n / decode_s:.0f} images/s; features {n / feature_s:.0f} images/s)")
        decode_s, feature_s, n = vitrina_features(model, samples, preprocess, warm_cache, workers)
        print(f"  vitrina, decoded images cached: features {n / feature_s:.1f} images/s (decoded cache read in {decode_s:.2f} s)")
    verdict = "met" if cold >= 120 else "NOT met"
    print(f"target: >= 120 images/s end to end from JPEG files, cold: {verdict} ({cold:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
