"""``GET /v1/reviews/queue``, ``POST /v1/checks/{id}/review`` and ``GET /v1/drift``: moderators review
logged checks and watch the mix of checks drift."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam

from vitrina.serving.responses import MAX_ID, DriftResponse, QueueResponse, ReviewRequest, ReviewResponse, Verdict
from vitrina.serving.reviews import FLAGGED, QueueFilter
from vitrina.serving.security import ANONYMOUS, KEY_NAME_STATE
from vitrina.serving.service import Service


def requester(request: Request) -> str:
    """The name of the API key that authenticated the request; "anonymous" when the server has no keys."""
    return getattr(request.state, KEY_NAME_STATE, ANONYMOUS)


def add_review_routes(v1: APIRouter, service: Service) -> None:
    @v1.get("/reviews/queue", response_model=QueueResponse, summary="Checks to review, most informative first")
    async def queue(
        request: Request,
        verdict: Annotated[list[Verdict] | None, Query(description="verdicts to offer (default: uncertain and mismatch)")] = None,
        category: Annotated[str | None, Query(max_length=200, description="declared or predicted category")] = None,
        model_version: Annotated[str | None, Query(max_length=64)] = None,
        since: Annotated[str | None, Query(max_length=32, description="ISO date or time, inclusive")] = None,
        until: Annotated[str | None, Query(max_length=32, description="ISO date (the whole day) or time, inclusive")] = None,
        order: Annotated[str, Query(pattern="^(informative|newest)$", description="informative: uncertain and low-margin "
                                    "checks first, then mismatches; newest: newest first")] = "informative",
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> dict[str, Any]:
        filters = QueueFilter(tuple(verdict or FLAGGED), category, model_version, since, until, order, limit)
        return await service.review_queue(requester(request), filters)

    @v1.post("/checks/{check_id}/review", response_model=ReviewResponse, status_code=201, summary="Review a logged check")
    async def review(request: Request, check_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], body: ReviewRequest) -> dict[str, Any]:
        return await service.review(check_id, requester(request), body.action, body.category)

    @v1.get("/drift", response_model=DriftResponse, summary="Per day: mismatch, uncertain and unknown shares; categories against training")
    async def drift(days: Annotated[int, Query(ge=1, le=366, description="the last DAYS days (UTC)")] = 14) -> dict[str, Any]:
        return await service.drift(days)
