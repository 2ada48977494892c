"""The server's settings: what one ``vitrina serve`` needs, checked once, passed to workers as JSON."""
from __future__ import annotations

import ipaddress
import json
import re
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
    store_images: str = "flagged"  # photos kept in the moderation log: all | flagged (mismatch, uncertain) | none
    stored_photo_mb: float = 10.0  # a larger photo is logged without its bytes
    photo_retention_days: float = 30.0  # stored photos are forgotten after this (the checks stay)
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
    max_decode_pixels: int | None = None  # pixels being decoded at once, all requests together (default 4 x max_pixels)
    db_timeout: float = 10.0  # seconds a check waits for a busy moderation log before 503
    metrics_public: bool = False  # with API keys, /metrics answers without one
    trusted_proxies: str | None = None  # comma-separated addresses/networks whose X-Forwarded-For is believed
    header_timeout: float = 10.0  # seconds for a request's line and headers to arrive
    body_timeout: float = 60.0  # seconds for a request's body to arrive, once its headers have
    max_connections: int = 1000  # open connections per server process; more are answered 503
    model_name: str = "vitrina"  # the model's name in the Open Inference Protocol (/v2/models/NAME)

    def __post_init__(self) -> None:
        checks = {
            "model_name": bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.model_name)),
            "max_upload_mb": self.max_upload_mb > 0, "max_pixels": self.max_pixels > 0, "max_photos": self.max_photos >= 1,
            "top_k": self.top_k >= 1, "store_images": self.store_images in ("all", "flagged", "none"),
            "stored_photo_mb": self.stored_photo_mb > 0, "photo_retention_days": self.photo_retention_days > 0, "batch_window_ms": self.batch_window_ms >= 0, "max_batch": self.max_batch >= 1,
            "queue_limit": self.queue_limit >= 1, "decode_threads": self.decode_threads >= 1,
            "reload_interval": self.reload_interval >= 0, "rate_limit": self.rate_limit >= 0,
            "confidence": self.confidence is None or 0.0 <= self.confidence <= 1.0,
            "max_decode_pixels": self.max_decode_pixels is None or self.max_decode_pixels >= self.max_pixels,
            "db_timeout": self.db_timeout >= 0, "header_timeout": self.header_timeout > 0,
            "body_timeout": self.body_timeout > 0, "max_connections": self.max_connections >= 1,
            "trusted_proxies": self.trusted_proxies is None or _networks(self.trusted_proxies) is not None,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ConfigError(f"invalid server settings: {', '.join(f'{name}={getattr(self, name)!r}' for name in wrong)}")

    @property
    def decode_budget(self) -> int:
        """Pixels being decoded at once, all requests together: by default room for four of the largest photos."""
        return self.max_decode_pixels if self.max_decode_pixels is not None else 4 * self.max_pixels

    @property
    def proxies(self) -> list[str]:
        """The trusted proxies, one address or network each (empty: X-Forwarded-For is never believed)."""
        return [str(network) for network in _networks(self.trusted_proxies or "") or []]

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


def _networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """The addresses and networks (CIDR) of a comma-separated list; None when one is neither."""
    try:
        return [ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip()]
    except ValueError:
        return None
