"""What `vitrina clean` looks for and how hard: :class:`CleanSettings` and the checks of its fields."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vitrina.errors import ConfigError

Log = Callable[[str], None]
KINDS = ("duplicates", "labels", "off-topic")


@dataclass
class CleanSettings:
    """What `vitrina clean` looks for and how hard (the CLI flags of the same names set them)."""

    # Backbones whose L2-normalised features are concatenated (comma-separated registry names).
    # Backbones, each optionally with its input size as NAME@SIZE (default: the backbone's own).
    # lite0 at 288 px: flipped-label recall 0.745 -> 0.776 on freiburg, for about 40 s more.
    models: str = "efficientnet_lite0@288,efficientnet_lite2"
    folds: int = 5  # cross-validation folds for the out-of-sample probabilities
    c: float = 10.0  # inverse L2 strength of the fold classifiers
    neighbours: int = 10  # nearest neighbours whose mean distance makes the off-topic score
    outlier_z: float = 3.0  # robust z-score of the off-topic score above which a photo is off-topic
    # Off-topic ranking: the distance above plus how atypical a photo's ImageNet concepts are for its
    # class (backbones with their ImageNet classifier); photos are flagged on the distance alone. Avito, judged by eye: 2 more real off-topic
    # photos in the top 50 of the ranking (scooters, a moped, a tricycle, an angle grinder).
    concepts: bool = True
    # Near duplicates (measured with resized, recompressed and cropped copies, bench/bench_clean.py):
    # close hashes, or fairly close hashes and similar features, make a candidate pair; it is a near
    # duplicate when the two images also line up pixel for pixel. (Freiburg: the planted copies
    # line up at 0.87-0.99, 0.97 typical; photos of one product on one shelf at 0.6-0.85, except
    # the same shelf shot twice in a row, which lines up as well as a copy.)
    hash_bits: int = 14  # perceptual hashes this close: a candidate whatever the features say
    similar_hash_bits: int = 24  # hashes this close and features at least min_similarity: a candidate
    min_similarity: float = 0.8
    min_alignment: float = 0.915  # grey correlation, allowing a small crop, a candidate needs
    exclude_kinds: str = "duplicates,labels,off-topic"  # what goes into exclude.csv
    review: int = 100  # suspects listed for review (ranked) beyond the flagged ones

    def check(self) -> CleanSettings:
        if self.folds < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")
        if self.c <= 0:
            raise ConfigError(f"c must be positive, got {self.c}")
        if self.review < 0:
            raise ConfigError(f"review must be at least 0, got {self.review}")
        if self.neighbours < 1:
            raise ConfigError(f"neighbours must be at least 1, got {self.neighbours}")
        if not 0 <= self.hash_bits <= self.similar_hash_bits <= 64:
            raise ConfigError("hash distances must satisfy 0 <= hash_bits <= similar_hash_bits <= 64")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ConfigError(f"min_similarity must be in [-1, 1], got {self.min_similarity}")
        if not -1.0 <= self.min_alignment <= 1.0:
            raise ConfigError(f"min_alignment must be in [-1, 1], got {self.min_alignment}")
        backbone_entries(self)
        excluded_kinds(self)
        return self


def backbone_entries(settings: CleanSettings) -> list[str]:
    """The ``NAME`` or ``NAME@SIZE`` entries of ``settings.models``, checked, each once, in order."""
    names = [name.strip() for name in settings.models.split(",") if name.strip()]
    if not names:
        raise ConfigError("--model: name at least one pretrained backbone (see `vitrina models`)")
    for name in names:
        model_and_size(name)
    return list(dict.fromkeys(names))


def model_and_size(entry: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@SIZE`` -> (registry name, input size or None for the backbone's own)."""
    name, _, size = entry.partition("@")
    if not size:
        return name, None
    if not size.isdigit() or not 16 <= int(size) <= 1024:
        raise ConfigError(f"--model {entry}: the size after @ must be a whole number of pixels (16-1024)")
    return name, int(size)


def excluded_kinds(settings: CleanSettings) -> list[str]:
    """The kinds of suspect (of :data:`KINDS`) that go into exclude.csv."""
    kinds = [k.strip() for k in settings.exclude_kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"--exclude-kinds: unknown kind {unknown[0]!r} (choose from {', '.join(KINDS)})")
    return kinds
