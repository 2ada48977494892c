"""Unknown-photo detection on the real datasets: AUROC of the stored default score and the alternatives.

Rows (``--only`` picks some):

  avito     a model trained on avito (laptop, phone), shown its validation photos (known) and the
            clothing-small photos (unknown); target AUROC >= 0.99
  freiburg  a model trained on 20 of freiburg's 25 classes (split 0; the 5 left out are drawn with
            seed 0), shown the test photos of its 20 classes (known) and every photo of the other 5
            (unknown); target AUROC >= 0.85

For each, the model is trained with `vitrina train` (``--mode``: finetune, the project's default,
about 30 min a model on 2 CPU cores; bottleneck takes minutes) and the scores are computed from its penultimate features
and calibrated logits: knn (k = 1 and 10), knn_energy (k = 1 and 10), mahalanobis, energy and msp
(each fitted as training fits the stored one, standardised on the validation photos where it
needs it); the row marked * is the
detector stored with the model (the default). Also printed: the share of unknown photos the stored
threshold lets through, and the share of known photos it accepts (95% on validation by design).

    python bench/bench_unknown.py [--only avito,freiburg] [--mode bottleneck|finetune] [--out DIR] [--reuse]

--reuse scores the runs already in --out instead of training them again.

Skips with a message when ../shared/datasets is absent.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
FREIBURG = SHARED / "freiburg-groceries"


def train(data: Path, out: Path, mode: str, reuse: bool = False) -> Path:
    if reuse and (out / "metrics.json").is_file():
        print(f"  reusing {out}", flush=True)
        return out
    cmd = [sys.executable, "-m", "vitrina", "train", str(data), "--out", str(out), "--quiet", "--mode", mode]
    print(f"  {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit("training failed")
    metrics = json.loads((out / "metrics.json").read_text())
    print(f"  trained in {time.perf_counter() - started:.0f} s: {metrics['split']} accuracy {metrics['accuracy']:.4f}", flush=True)
    return out


def features_and_logits(run: Path, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and calibrated logits of image files under the run's model."""
    import torch

    from vitrina.data.cache import decode_samples, default_cache_dir
    from vitrina.data.samples import Sample
    from vitrina.models.checkpoint import load_model
    from vitrina.models.runtime import resolve_device
    from vitrina.models.unknown import penultimate_features

    model, meta = load_model(run)
    preprocess = meta.preprocess
    decoded = decode_samples([Sample(p, "") for p in paths], preprocess, default_cache_dir(), workers=2, progress=False)
    if meta.mode == "bottleneck":  # a frozen backbone: its features are in the training cache
        from types import SimpleNamespace

        from vitrina.training.features import BackboneFeatures

        body = BackboneFeatures(model, f"{meta.model}|pretrained", SimpleNamespace(preprocess=preprocess),
                                default_cache_dir(), resolve_device("cpu"), "fp32", log=lambda _: None)
        feats = body(decoded)
    else:
        feats = penultimate_features(model, decoded.images, preprocess, resolve_device("cpu"), "fp32", default_cache_dir())
    with torch.inference_mode():
        logits = model.forward_head(torch.from_numpy(feats)).numpy()
    return feats, logits


def evaluate(name: str, run: Path, known: list[str], unknown: list[str], train_paths: list[str], train_labels: list[int]) -> None:
    from sklearn.metrics import roc_auc_score

    from vitrina.models.checkpoint import read_meta
    from vitrina.models.unknown import fit_unknown, load_unknown, score_features

    meta = read_meta(run)
    stored = meta.unknown
    kf, kl = features_and_logits(run, known)
    uf, ul = features_and_logits(run, unknown)
    tf, _ = features_and_logits(run, train_paths)
    vf, vl = features_and_logits(run, json.loads((run / "splits.json").read_text())["splits"]["val"])
    truth = np.r_[np.zeros(len(kf)), np.ones(len(uf))]
    print(f"[{name}] {len(kf)} known photos, {len(uf)} unknown photos; stored detector: {stored.score} "
          f"(k={stored.k or '-'}), threshold {stored.threshold:.4f} at {stored.accept_rate:.0%} of validation")
    scorer = load_unknown(run, stored)
    a, b = score_features(scorer, kf, kl), score_features(scorer, uf, ul)
    print(f"[{name}] * stored {stored.score:<12} AUROC {roc_auc_score(truth, np.r_[a, b]):.4f}; with its threshold: "
          f"known accepted {np.mean(a <= stored.threshold):.3f}, unknown let through {np.mean(b <= stored.threshold):.3f}")
    labels = np.asarray(train_labels)
    for method, k in (("knn", 1), ("knn", 10), ("knn_energy", 1), ("knn_energy", 10), ("mahalanobis", 0), ("energy", 0), ("msp", 0)):
        s, _ = fit_unknown(tf, labels, vf, vl, meta.num_classes, method=method, k=max(1, k))
        a, b = score_features(s, kf, kl), score_features(s, uf, ul)
        label = f"{method}{k if k else ''}"
        print(f"[{name}]   {label:<14} AUROC {roc_auc_score(truth, np.r_[a, b]):.4f}")


def image_paths(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.jpg"))


def bench_avito(out: Path, mode: str, reuse: bool = False) -> None:
    print("[avito] model: avito train (validation held for the threshold), unknown: clothing-small")
    run = train(SHARED / "avito", out / "avito-run", mode, reuse)
    splits = json.loads((run / "splits.json").read_text())
    classes = splits["classes"]
    train_paths = splits["splits"]["train"]
    train_labels = [classes.index(Path(p).parent.name) for p in train_paths]
    known = image_paths(SHARED / "avito" / "validation")
    evaluate("avito", run, known, image_paths(SHARED / "clothing-small"), train_paths, train_labels)


def bench_freiburg(out: Path, mode: str, reuse: bool = False) -> None:
    rng = np.random.default_rng(0)
    names = [line.split()[0] for line in (FREIBURG / "splits" / "classid.txt").read_text().splitlines() if line.strip()]
    held = sorted(rng.choice(names, 5, replace=False).tolist())
    print(f"[freiburg] model: 20 classes of split 0; left out: {', '.join(held)}")
    folder = out / "freiburg-data"
    folder.mkdir(parents=True, exist_ok=True)
    lists = {}
    for split in ("train0", "test0"):
        rows = [line.split()[0] for line in (FREIBURG / "splits" / f"{split}.txt").read_text().splitlines() if line.strip()]
        kept = [p for p in rows if p.split("/")[0] not in held]
        lists[split] = kept
        (folder / f"{split}.txt").write_text("".join(f"{p} {p.split('/')[0]}\n" for p in kept))
    data = folder / "dataset.yaml"
    data.write_text(f"root: {FREIBURG / 'images'}\ntrain: {folder / 'train0.txt'}\ntest: {folder / 'test0.txt'}\n")
    run = train(data, out / "freiburg-run", mode, reuse)
    splits = json.loads((run / "splits.json").read_text())
    classes = splits["classes"]
    train_paths = splits["splits"]["train"]
    train_labels = [classes.index(Path(p).parent.name) for p in train_paths]
    known = [str(FREIBURG / "images" / p) for p in lists["test0"]]
    unknown = [p for name in held for p in image_paths(FREIBURG / "images" / name)]
    evaluate("freiburg", run, known, unknown, train_paths, train_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description="unknown-photo detection on the real datasets")
    parser.add_argument("--only", default="avito,freiburg")
    parser.add_argument("--mode", default="finetune", choices=["bottleneck", "finetune"])
    parser.add_argument("--out", help="folder for the runs (default: a temporary folder, kept)")
    parser.add_argument("--reuse", action="store_true", help="score the runs already in --out")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} not found (the real datasets live beside the repository)")
        return
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vitrina-bench-unknown-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"outputs: {out}")
    only = {name.strip() for name in args.only.split(",")}
    if "avito" in only:
        bench_avito(out, args.mode, args.reuse)
    if "freiburg" in only:
        bench_freiburg(out, args.mode, args.reuse)


if __name__ == "__main__":
    main()
