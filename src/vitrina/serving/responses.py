"""The JSON bodies the HTTP API answers, as pydantic models: they document the API and filter its answers."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Verdict = Literal["match", "mismatch", "uncertain"]
# Ids are 64-bit in every database the log may live in; larger numbers are a 422, not a database error.
MAX_ID = 2**63 - 1
ReviewAction = Literal["confirm", "correct", "off_topic", "skip"]


class Label(BaseModel):
    label: str
    probability: float


class PhotoResult(BaseModel):
    filename: str
    sha256: str = Field(description="SHA-256 of the uploaded bytes")
    predicted: str
    confidence: float
    uncertain: bool = Field(description="the confidence is below the model's threshold, or the photo is unknown")
    unknown: bool | None = Field(None, description="the photo looks unlike every training photo (null: the model has no detector)")
    unknown_score: float | None = Field(None, description="the unknown-photo score; above the model's threshold a photo is unknown")
    top: list[Label]


class PredictResponse(PhotoResult):
    model_version: str


class BatchResponse(BaseModel):
    model_version: str
    results: list[PhotoResult]


class CheckResponse(BaseModel):
    check_id: int = Field(description="the check's id in the moderation log")
    model_version: str
    declared: str
    predicted: str = Field(description="the category the listing's photos show (mean of their probabilities)")
    confidence: float
    threshold: float | None = Field(description="confidence below which the verdict is uncertain")
    unknown: bool | None = Field(None, description="the photos' mean unknown-photo score is above the model's threshold: uncertain")
    unknown_threshold: float | None = Field(None, description="the unknown-photo score above which photos are unknown")
    verdict: Verdict
    suggestion: str | None = Field(description="the category to use instead, on a mismatch")
    declared_level: Literal["fine", "coarse"] = Field("fine", description="with a taxonomy: the level the declared category is at")
    suggestion_level: Literal["fine", "coarse"] | None = Field(None, description="the level of the suggestion: the deepest the model is sure of")
    photos: list[PhotoResult]


class ModelResponse(BaseModel):
    name: str
    version: str
    labels: list[str]
    coarse_of: dict[str, str] = Field({}, description="each label's parent category, for a model trained with coarse labels")
    preprocess: dict[str, Any]
    thresholds: dict[str, float]
    metrics: dict[str, Any]
    mode: str | None
    backend: str
    loaded_at: str
    limits: dict[str, float] = Field(
        description="max_photos a request, max_upload_mb a photo, max_pixels a photo, max_decode_pixels all requests at once"
    )


class LoggedPhoto(BaseModel):
    position: int
    sha256: str
    predicted: str
    confidence: float
    image_stored: bool


class LoggedLabel(BaseModel):
    label: str
    prob: float


class ReviewEntry(BaseModel):
    id: int
    time: str
    reviewer: str = Field(description="the name of the API key that reviewed (anonymous without keys)")
    action: ReviewAction
    category: str | None = Field(description="the category the review gives the photos (confirm: the prediction)")
    new_class: bool = Field(description="the category is one the model does not know")


class LoggedCheck(BaseModel):
    id: int
    time: str
    declared: str
    predicted: str
    confidence: float
    verdict: Verdict
    model_version: str
    top: list[LoggedLabel] | None = Field(None, description="the listing's likeliest categories (null in checks logged before 0.2)")
    margin: float | None = Field(None, description="top probability minus the second")
    unknown_score: float | None = None
    submitted_by: str | None = Field(None, description="the name of the API key that asked for the check")
    suggestion: str | None = None
    declared_level: str | None = Field(None, description="fine or coarse (a model trained with coarse labels)")
    suggestion_level: str | None = None
    photos: list[LoggedPhoto]
    reviews: list[ReviewEntry] = Field([], description="every review of this check, oldest first: the audit trail")


class QueuedCheck(LoggedCheck):
    disagreement: bool = Field(description="reviewers gave this check different categories")


class QueueResponse(BaseModel):
    checks: list[QueuedCheck]


class ReviewRequest(BaseModel):
    action: ReviewAction = Field(description="confirm: the prediction is right; correct: the photos show `category`; "
                                 "off_topic: not a product; skip: not now (hidden from this reviewer's queue)")
    category: str | None = Field(None, max_length=200, description="with correct: the right category (a new one is recorded as such)")


class ReviewResponse(BaseModel):
    check_id: int
    review: ReviewEntry


class ChecksResponse(BaseModel):
    checks: list[LoggedCheck]
    next_before: int | None = Field(description="pass as ?before= for the next page; null on the last")
    next_after: int | None = Field(None, description="with ?after=: pass as ?after= to continue following the log")


class ErrorResponse(BaseModel):
    error: str
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        401: "API key missing or invalid (when keys are configured)",
        408: "the request body did not arrive in time (--body-timeout)",
        413: "upload too large, or too many photos",
        415: "not a multipart form, or not a supported photo format",
        422: "missing field, corrupt or non-image data, too many pixels, unknown category",
        429: "rate limit exceeded, or too many failed authentications (see Retry-After)",
        503: "queue or decode budget full, moderation log busy, or not ready (see Retry-After)",
    }.items()
}


class DriftFlag(BaseModel):
    category: str
    by: Literal["declared", "predicted"]
    share: float
    training_share: float
    direction: Literal["high", "low"]


class DriftDay(BaseModel):
    day: str = Field(description="UTC date")
    checks: int
    verdicts: dict[str, int]
    unknown: int = Field(description="checks whose photos look unlike every training photo")
    shares: dict[str, float] = Field(description="of the day's checks: mismatch, uncertain, unknown")
    declared: dict[str, int]
    predicted: dict[str, int]
    flags: list[DriftFlag] = Field(description="categories whose share is beyond high or low times their training share "
                                   "(days with at least min_checks checks)")


class DriftResponse(BaseModel):
    days: list[DriftDay]
    training_mix: dict[str, float] = Field(description="each class's share of the training photos (empty for models that do not record it)")
    min_checks: int
    high: float
    low: float
