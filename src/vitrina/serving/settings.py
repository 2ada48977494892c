"""The server's settings: what one ``vitrina serve`` needs, checked once, passed to workers as JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vitrina.errors import ConfigError

MEBIBYTE = 1024 * 1024
# Room for the multipart framing and the text fields around the photos of one request.
FORM_OVERHEAD_BYTES = MEBIBYTE


@dataclass(frozen=True)
class ServeSettings:
    """What a server needs; plain values, so worker processes receive them as JSON."""

    model: str
    backend: str = "auto"
    threads: int | None = None  # ONNX Runtime threads (default: all cores)
    database: str | None = None  # path or URL of the moderation log (default: moderation.db beside the model)
    store_images: bool = False  # keep the photos themselves in the moderation log
    api_keys_file: str | None = None
    rate_limit: float = 0.0  # requests a second per client; 0: no limit
    rate_burst: int | None = None
    max_upload_mb: float = 10.0
    max_pixels: int = 40_000_000
    max_photos: int = 10
    top_k: int = 5
    batch_window_ms: float = 5.0
    max_batch: int = 32
    queue_limit: int = 256  # photos admitted and not yet answered
    decode_threads: int = 2
    reload_interval: float = 2.0  # seconds between looks at the model files; 0: never reload
    confidence: float | None = None  # overrides the model's calibrated confidence threshold

    def __post_init__(self) -> None:
        checks = {
            "max_upload_mb": self.max_upload_mb > 0, "max_pixels": self.max_pixels > 0, "max_photos": self.max_photos >= 1,
            "top_k": self.top_k >= 1, "batch_window_ms": self.batch_window_ms >= 0, "max_batch": self.max_batch >= 1,
            "queue_limit": self.queue_limit >= 1, "decode_threads": self.decode_threads >= 1,
            "reload_interval": self.reload_interval >= 0, "rate_limit": self.rate_limit >= 0,
            "confidence": self.confidence is None or 0.0 <= self.confidence <= 1.0,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ConfigError(f"invalid server settings: {', '.join(f'{name}={getattr(self, name)!r}' for name in wrong)}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MEBIBYTE)

    @property
    def max_request_bytes(self) -> int:
        return self.max_upload_bytes * self.max_photos + FORM_OVERHEAD_BYTES

    def database_target(self) -> str:
        """The moderation log's path or URL: as given, else ``moderation.db`` beside the model."""
        if self.database:
            return self.database
        model = Path(self.model)
        return str((model if model.is_dir() else model.parent) / "moderation.db")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        return cls(**json.loads(text))
