"""Knowing when not to answer: an "unknown" score, its threshold, and where they are stored.

A photo of something the model never saw must not be filed under a known class with confidence.
The score measures how unlike the training photos an input is (higher = more unknown):

- ``knn`` (the default): 1 - cosine similarity of the input's penultimate features (the pooled
  backbone features the head sees, centred on the training photos' mean) to its k-th nearest
  training photo;
- ``mahalanobis``: the smallest Mahalanobis distance of the L2-normalised features to a class
  mean (shared, shrunk covariance);
- ``energy``: -logsumexp of the logits;
- ``msp``: 1 - the top softmax probability;
- ``knn_energy``: the nearest training photo's distance (k = 1) and the energy, each standardised
  on the validation photos, summed: near-duplicate evidence and the classifier's own doubt.

How many neighbours (:func:`default_k`): the nearest one (k = 1) when the backbone was trained
(fine-tuning, the default, or from scratch), the 10th when it stayed frozen (bottleneck).
bench/bench_unknown.py measures the scores on two cases: an avito model shown clothing photos
(far from its classes), and a freiburg model trained on 20 classes shown the other 5 (groceries
too). AUROC, avito / freiburg:

=================  =====================  ======================
score              fine-tuned             frozen (bottleneck)
=================  =====================  ======================
knn, k = 1         **0.993** / **0.855**  0.964 / 0.826
knn, k = 10        0.996 / 0.753          **0.990** / 0.706
knn_energy, k = 1  0.978 / 0.871          0.966 / 0.845
mahalanobis        1.000 / 0.684          1.000 / 0.601
energy             0.928 / 0.822          0.901 / 0.772
msp                0.919 / 0.822          0.912 / 0.786
=================  =====================  ======================

Freiburg's photos come in bursts (the same shelf a moment apart), so a known photo usually has a
near twin among the training photos and an unknown one has none: the nearest photo tells them
apart. Frozen ImageNet features put some clothing photos next to a stray training photo (avito
has off-topic photos), which the 10th neighbour overrules. The threshold is the score below
which ``accept_rate`` (95% by default) of the validation photos fall.

The scorer is a torch module (:class:`UnknownScore`) over ``(features, logits)``, so PyTorch
runs it beside the head and an ONNX export can include it as a second output
(:data:`SCORE_OUTPUT`). Its statistics (the kNN bank, or class means and precision matrix) are
stored beside the weights in ``unknown.safetensors``; its settings and threshold in
``model.json`` under ``"unknown"``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitrina.errors import ModelError
from vitrina.models.onnx_graph import OnnxFeatureExtractor
from vitrina.models.runtime import body_in_onnx, forward_uint8
from vitrina.description import SCORE_OUTPUT, UNKNOWN_FILE, UNKNOWN_SCORES, UnknownDetector

SCORES = UNKNOWN_SCORES
DEFAULT_SCORE = "knn"
DEFAULT_K = 10  # the kNN score's neighbours on frozen features (see default_k)
KNN_SCORES = ("knn", "knn_energy")  # the scores that keep a bank of training features
MAX_BANK = 20_000  # training photos kept for the kNN score (a seeded random subset beyond that)
ACCEPT_RATE = 0.95


def bank_rows(n: int, seed: int) -> np.ndarray:
    """The photos of ``n`` kept in a bank: all of them up to MAX_BANK, a seeded subset beyond."""
    return np.arange(n) if n <= MAX_BANK else np.sort(np.random.default_rng(seed).choice(n, MAX_BANK, replace=False))


def default_k(method: str, trained_backbone: bool) -> int:
    """The recommended neighbours for ``method``: 1 on a trained backbone's features (see above)."""
    return 1 if method == "knn_energy" or (trained_backbone and method == "knn") else DEFAULT_K


class UnknownScore(nn.Module):
    """``(features, logits) -> score`` per row; higher means less like the training photos."""

    def __init__(self, method: str, k: int = DEFAULT_K, bank: torch.Tensor | None = None,
                 means: torch.Tensor | None = None, precision: torch.Tensor | None = None,
                 centre: torch.Tensor | None = None, prepared: bool = False, stats: torch.Tensor | None = None):
        """``bank``: training features; with ``prepared`` the stored form instead (centred on
        ``centre`` and L2-normalised, see :meth:`tensors`)."""
        super().__init__()
        if method not in SCORES:
            raise ModelError(f"unknown score {method!r} (choose from {', '.join(SCORES)})")
        self.method, self.k = method, int(k)
        if method in KNN_SCORES:
            if bank is None or len(bank) == 0:
                raise ModelError("the knn unknown score needs a bank of training features")
            self.k = max(1, min(self.k, len(bank)))
            bank = bank.float()
            if prepared:
                if centre is None:
                    raise ModelError("a stored knn bank needs its centre")
            else:
                centre = bank.mean(0)
                bank = F.normalize(bank - centre, dim=1)
            self.register_buffer("centre", centre.float())
            self.register_buffer("bank", bank)
        if method == "knn_energy":  # (mean, std) of each part on the validation photos; see standardise()
            if prepared and stats is None:
                raise ModelError("a stored knn_energy score needs its standardisation statistics")
            self.register_buffer("stats", (stats if stats is not None else torch.tensor([0.0, 1.0, 0.0, 1.0])).float())
        if method == "mahalanobis":
            if means is None or precision is None:
                raise ModelError("the mahalanobis unknown score needs class means and a precision matrix")
            self.register_buffer("means", means.float())
            self.register_buffer("precision", precision.float())

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.method == "msp":
            return 1.0 - torch.softmax(logits.float(), dim=1).max(dim=1).values
        if self.method == "energy":
            return -torch.logsumexp(logits.float(), dim=1)
        if self.method == "knn":
            return self._knn(features)
        if self.method == "knn_energy":
            knn, energy = self.parts(features, logits)
            return (knn - self.stats[0]) / self.stats[1] + (energy - self.stats[2]) / self.stats[3]
        f = F.normalize(features.float(), dim=1)
        diff = f[:, None, :] - self.means[None, :, :]  # N x C x D
        dist = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return dist.min(dim=1).values

    def _knn(self, features: torch.Tensor) -> torch.Tensor:
        centred = features.float() - self.centre
        # F.normalize, written out: its Expand node defeats ONNX Runtime's shape inference for int8
        sims = (centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ self.bank.T
        return 1.0 - torch.topk(sims, self.k, dim=1).values[:, -1]

    def bank_scores(self, batch: int = 1024) -> np.ndarray:
        """The kNN score of each photo in the bank, itself left out of its neighbours: how far
        apart the training photos lie in this network's features (a refit's threshold scale)."""
        if self.method != "knn":
            raise ModelError(f"only the knn score scores its own bank, not {self.method!r}")
        bank = self.bank.float()
        k = min(self.k + 1, len(bank))  # the photo itself is its own nearest neighbour
        with torch.inference_mode():
            parts = [1.0 - torch.topk(bank[start : start + batch] @ bank.T, k, dim=1).values[:, -1]
                     for start in range(0, len(bank), batch)]
        return torch.cat(parts).double().numpy()

    def parts(self, features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``knn_energy``'s two parts, before standardising: kNN distance and energy."""
        return self._knn(features), -torch.logsumexp(logits.float(), dim=1)

    def standardise(self, features: torch.Tensor, logits: torch.Tensor) -> None:
        """``knn_energy``: fit each part's mean and spread on these (validation) photos."""
        with torch.inference_mode():
            knn, energy = self.parts(features, logits)
        spread = lambda v: v.std().clamp_min(1e-6) if len(v) > 1 else torch.tensor(1.0)  # noqa: E731
        self.stats = torch.stack([knn.mean(), spread(knn), energy.mean(), spread(energy)]).float()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The statistics to store (fp16 bank: half the file, the same decisions to about 1e-3)."""
        if self.method in KNN_SCORES:  # the bank is stored centred and normalised
            stored = {"bank": self.bank.half().contiguous(), "centre": self.centre.contiguous()}
            return {**stored, "stats": self.stats.contiguous()} if self.method == "knn_energy" else stored
        if self.method == "mahalanobis":
            return {"means": self.means.contiguous(), "precision": self.precision.contiguous()}
        return {}


def build_score(method: str, train_features: np.ndarray, train_labels: np.ndarray, num_classes: int,
                k: int | None = None, seed: int = 0) -> UnknownScore:
    """An :class:`UnknownScore` fitted on the training photos' penultimate features.

    ``knn_energy`` still needs :meth:`UnknownScore.standardise` on validation photos
    (:func:`fit_unknown` does it).
    """
    feats = torch.from_numpy(np.asarray(train_features, dtype=np.float32))
    k = default_k(method, trained_backbone=False) if k is None else k
    if method in KNN_SCORES:
        if len(feats) > MAX_BANK:
            feats = feats[torch.from_numpy(bank_rows(len(feats), seed))]
        return UnknownScore(method, k, bank=feats)
    if method == "mahalanobis":
        f = F.normalize(feats, dim=1).double()
        labels = torch.from_numpy(np.asarray(train_labels))
        means = torch.stack([f[labels == c].mean(0) if (labels == c).any() else torch.zeros(f.shape[1], dtype=f.dtype) for c in range(num_classes)])
        centred = f - means[labels]
        cov = centred.T @ centred / max(1, len(f) - 1)
        shrink = 0.1
        cov = (1 - shrink) * cov + shrink * torch.eye(cov.shape[0], dtype=cov.dtype) * torch.trace(cov) / cov.shape[0]
        return UnknownScore("mahalanobis", means=means.float(), precision=torch.linalg.inv(cov).float())
    return UnknownScore(method, k)


def score_features(scorer: UnknownScore, features: np.ndarray, logits: np.ndarray, batch: int = 512) -> np.ndarray:
    """Scores of feature and logit rows (numpy in, numpy out), in batches."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), batch):
            f = torch.from_numpy(np.asarray(features[start : start + batch], dtype=np.float32))
            z = torch.from_numpy(np.asarray(logits[start : start + batch], dtype=np.float32))
            out.append(scorer(f, z).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def threshold_for(scores: np.ndarray, accept_rate: float) -> float:
    """The score at or below which ``accept_rate`` of in-distribution (validation) photos fall."""
    if len(scores) == 0:
        return float("inf")
    return float(np.quantile(scores, accept_rate, method="higher"))


def _round_up(value: float, digits: int = 6) -> float:
    """``value`` to ``digits`` decimals, never below it: the validation photo at the threshold stays accepted."""
    import math

    if not math.isfinite(value):
        return value
    scale = 10**digits
    return math.ceil(value * scale) / scale


def fit_unknown(
    train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, val_logits: np.ndarray,
    num_classes: int, *, method: str = DEFAULT_SCORE, k: int | None = None, accept_rate: float = ACCEPT_RATE, seed: int = 0,
) -> tuple[UnknownScore, UnknownDetector]:
    """The scorer and its description for ``model.json`` (threshold chosen on the validation photos)."""
    if not 0.0 < accept_rate <= 1.0:
        raise ModelError(f"accept_rate must be in (0, 1], got {accept_rate}")
    scorer = build_score(method, train_features, train_labels, num_classes, k, seed)
    if method == "knn_energy":
        scorer.standardise(torch.from_numpy(np.asarray(val_features, dtype=np.float32)),
                           torch.from_numpy(np.asarray(val_logits, dtype=np.float32)))
    val_scores = score_features(scorer, val_features, val_logits)
    description = UnknownDetector(
        score=method, threshold=_round_up(threshold_for(val_scores, accept_rate)), accept_rate=accept_rate,
        file=UNKNOWN_FILE if method in (*KNN_SCORES, "mahalanobis") else None, output=SCORE_OUTPUT,
        k=scorer.k if method in KNN_SCORES else None, bank_size=int(len(scorer.bank)) if method in KNN_SCORES else None,
    )
    return scorer, description


def save_unknown(folder: str | Path, scorer: UnknownScore) -> Path | None:
    """Write the scorer's statistics beside the model (``unknown.safetensors``), atomically."""
    import os

    from safetensors.torch import save_file

    tensors = scorer.tensors()
    if not tensors:
        return None
    path = Path(folder) / UNKNOWN_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return path


def load_unknown(folder: str | Path, detector: UnknownDetector | None) -> UnknownScore | None:
    """The stored scorer of a run folder's model (None when the model has none)."""
    if detector is None:
        return None
    tensors: dict[str, torch.Tensor] = {}
    if detector.file:
        from safetensors.torch import load_file

        path = Path(folder) / detector.file
        if not path.is_file():
            raise ModelError(f"{path}: the unknown-photo statistics of this model are missing")
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise ModelError(f"{path}: cannot read the unknown-photo statistics: {exc}") from None
    return UnknownScore(detector.score, detector.k or DEFAULT_K, bank=tensors.get("bank"),
                        means=tensors.get("means"), precision=tensors.get("precision"),
                        centre=tensors.get("centre"), prepared=True, stats=tensors.get("stats"))


class ScoredNet(nn.Module):
    """A classifier plus its unknown score: images -> (probabilities, score). What an export runs."""

    def __init__(self, net: nn.Module, scorer: UnknownScore):
        super().__init__()
        self.net, self.scorer = net, scorer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the score sees the head's own logits of the image as given, not the vote or its mirror image
        probs, features, logits = self.net.classify_images(x)
        return probs, self.scorer(features, logits)


def penultimate_features(model: nn.Module, images: np.ndarray, preprocess: Any, device: torch.device, precision: str,
                         cache_dir: str | Path | None) -> np.ndarray:
    """The pooled backbone features of uint8 N x H x W x C images: the body in ONNX Runtime where
    :func:`~vitrina.models.runtime.body_in_onnx` says so, eager PyTorch otherwise."""
    if len(images) == 0:
        return np.zeros((0, getattr(model, "num_features", 1)), dtype=np.float32)
    if body_in_onnx(model, preprocess, len(images), cache_dir, device, precision):
        return OnnxFeatureExtractor(model, preprocess, cache_dir)(np.asarray(images))  # type: ignore[arg-type]
    return forward_uint8(model.forward_features, images, preprocess, device, precision)
