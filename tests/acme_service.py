"""Stand-in for Acme Rewards' scoring API: strict about the request shape and the API key.

It answers 401 without the right ``X-Acme-Key`` and 422 for any body that is not
Acme's shape, so a passing end-to-end run proves the pipeline sent Acme's shape.
Serve with ``uvicorn tests.acme_service:app`` and ``ACME_API_KEY`` set.
"""
from __future__ import annotations

import os
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

PREMIUM_THRESHOLD = 50.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AcmeFeatures(_Strict):
    avg_points_bought: float
    pct_buy_transactions: float = Field(ge=0, le=1)
    pct_redeem_transactions: float = Field(ge=0, le=1)
    days_since_last_transaction: int = Field(ge=0)
    total_revenue_usd: float
    txn_count: int = Field(ge=1)


class ScoreRequest(_Strict):
    model_version: Literal["2024-06"]
    features: AcmeFeatures


class Score(BaseModel):
    score: float


class DecideRequest(_Strict):
    ats_score: float
    resp_score: float


class Decision(BaseModel):
    decision: Literal["ACME_STANDARD", "ACME_PREMIUM"]


def ats_score(f: AcmeFeatures) -> float:
    return abs(f.avg_points_bought) * (f.pct_buy_transactions + 0.5 - f.pct_redeem_transactions / 2)


def resp_score(f: AcmeFeatures) -> float:
    return min(1.0, f.total_revenue_usd / (f.txn_count * (f.days_since_last_transaction + 1)))


def decide(body: DecideRequest) -> str:
    return "ACME_PREMIUM" if body.ats_score * body.resp_score >= PREMIUM_THRESHOLD else "ACME_STANDARD"


def require_key(x_acme_key: str | None = Header(default=None)) -> None:
    if not x_acme_key or x_acme_key != os.environ.get("ACME_API_KEY"):
        raise HTTPException(status_code=401, detail="missing or wrong X-Acme-Key")


router = APIRouter(prefix="/acme/v2", dependencies=[Depends(require_key)])


@router.post("/models/ats:score", response_model=Score)
def score_ats(body: ScoreRequest) -> Score:
    return Score(score=ats_score(body.features))


@router.post("/models/resp:score", response_model=Score)
def score_resp(body: ScoreRequest) -> Score:
    return Score(score=resp_score(body.features))


@router.post("/offers/decide", response_model=Decision)
def decide_offer(body: DecideRequest) -> Decision:
    return Decision(decision=decide(body))


app = FastAPI(title="Acme scoring API (test stand-in)")
app.include_router(router)


@app.get("/")
def ping() -> dict[str, str]:
    return {"msg": "acme"}
