"""The serving parts alone: micro-batching, the moderation log, keys and the rate limit."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from vitrina.errors import ConfigError
from vitrina.serving.batcher import MicroBatcher
from vitrina.serving.metrics import ServiceMetrics
from vitrina.serving.model import files_version
from vitrina.serving.moderation import ModerationLog, database_url
from vitrina.serving.security import ApiKeys, RateLimiter, load_api_keys
from vitrina.serving.settings import ServeSettings

CLASSES = ["hat", "shoes", "dress"]


# ----------------------------------------------------------------------------- micro-batching
class CountingPredictor:
    """Stands in for a Predictor: records each model call's batch size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_scored(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(images))
        values = images[:, 0, 0, 0].astype(np.float32)
        return np.tile(values[:, None], (1, 3)), values / 10  # row i carries image i's value; so does its unknown score


class FakeModel:
    def __init__(self) -> None:
        self.predictor = CountingPredictor()


async def batched(photos_per_request: list[int], max_batch: int, window_s: float) -> tuple[list[int], list[np.ndarray]]:
    batcher = MicroBatcher(max_batch, window_s, queue_limit=100, metrics=ServiceMetrics())
    batcher.start()
    model = FakeModel()

    async def request(index: int, photos: int) -> np.ndarray:
        with batcher.admit(photos) as admission:
            await asyncio.sleep(0.001 * index)  # decoding
            pixels = np.full((photos, 2, 2, 3), index, dtype=np.uint8)
            return await batcher.submit(admission, model, pixels)  # type: ignore[arg-type]

    answers = await asyncio.gather(*(request(i, n) for i, n in enumerate(photos_per_request)))
    await batcher.stop()
    return model.predictor.calls, list(answers)


def test_concurrent_requests_share_model_calls_and_get_their_own_answers() -> None:
    calls, answers = asyncio.run(batched([1, 2, 1, 3, 1], max_batch=32, window_s=0.005))
    assert calls == [8]
    for index, (probs, scores) in enumerate(answers):
        assert (probs[:, 0] == index).all() and np.allclose(scores, index / 10)


def test_batches_never_exceed_max_batch_and_one_photo_batches_turn_it_off() -> None:
    calls, _ = asyncio.run(batched([2] * 6, max_batch=4, window_s=0.005))
    assert sum(calls) == 12 and max(calls) <= 4
    calls, _ = asyncio.run(batched([1] * 5, max_batch=1, window_s=0.005))
    assert calls == [1] * 5


# ----------------------------------------------------------------------------- moderation log
def test_database_targets_are_paths_or_urls(tmp_path: Path) -> None:
    assert database_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert database_url("postgresql+psycopg://u@host/db") == "postgresql+psycopg://u@host/db"
    with pytest.raises(ConfigError, match="moderation database"):
        ModerationLog("nosuchdialect://x/y")


# ----------------------------------------------------------------------------- access
def test_api_keys_come_from_the_environment_and_a_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("first  # the shop's key\n\nsecond\nanna:s3cret:with-colon\n")
    keys = load_api_keys(keys_file, environ={"VITRINA_API_KEYS": "env-one, bot.7:env-two,"})
    assert set(keys) == {"first", "second", "s3cret:with-colon", "anna:s3cret:with-colon", "env-one", "env-two", "bot.7:env-two"}
    assert keys["s3cret:with-colon"] == "anna" and keys["env-two"] == "bot.7"  # name:key; old unnamed keys still work
    assert keys["first"].startswith("key-") and len(keys["first"]) == 12 and keys["first"] != keys["second"]
    assert load_api_keys(None, environ={}) == {}
    with pytest.raises(ConfigError, match="no key"):
        (tmp_path / "empty").write_text("# nothing\n")
        load_api_keys(tmp_path / "empty", environ={})
    with pytest.raises(ConfigError, match="missing"):
        load_api_keys(tmp_path / "missing", environ={})
    checker = ApiKeys(keys)
    assert checker.enabled and checker.valid("first") and not checker.valid("firs") and not checker.valid(None)
    assert checker.name_of("s3cret:with-colon") == "anna" == checker.name_of("anna:s3cret:with-colon")  # old whole keys still work


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.acquire("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a", now=0.0) == pytest.approx(0.5)
    assert limiter.acquire("b", now=0.0) == 0.0
    assert limiter.acquire("a", now=0.6) == 0.0  # refilled 1.2 tokens


def test_settings_are_checked_and_travel_as_json(tmp_path: Path) -> None:
    settings = ServeSettings(model=str(tmp_path), max_batch=8, confidence=0.4)
    assert ServeSettings.from_json(settings.to_json()) == settings
    assert settings.database_target() == str(tmp_path / "moderation.db")
    with pytest.raises(ConfigError, match="max_batch=0"):
        ServeSettings(model="m", max_batch=0)


def test_the_model_version_follows_the_file_content(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"one")
    first = files_version([model])
    model.write_bytes(b"two")
    assert files_version([model]) != first and len(first) == 12


def test_the_decode_budget_admits_by_pixels() -> None:
    from vitrina.serving.admission import DecodeBudget
    from vitrina.serving.errors import Overloaded, PayloadTooLarge

    metrics = ServiceMetrics()
    budget = DecodeBudget(100, metrics)
    budget.reserve(60)
    budget.reserve(40)
    with pytest.raises(Overloaded, match="100 pixels in progress") as busy:
        budget.reserve(1)
    assert busy.value.headers == {"Retry-After": "1"}
    budget.release(40)
    budget.reserve(30)
    with pytest.raises(PayloadTooLarge, match="101 pixels"):
        budget.reserve(101)  # more than the whole budget: never admitted, so 413 rather than 503
    budget.release(60)
    budget.release(30)
    assert budget.in_flight == 0 and b"vitrina_decode_pixels_in_flight 0.0" in metrics.exposition()


def test_the_server_limits_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    from vitrina.cli.parser import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for flag in ("--header-timeout", "--body-timeout", "--max-connections", "--max-decode-pixels", "--trusted-proxies",
                 "--metrics-public", "--db-timeout"):
        assert flag in text, flag
