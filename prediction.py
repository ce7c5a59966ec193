"""The reference ML and offer models: typed request/response shapes and pure formulas.

The formulas live here, not in ``app.py``, so the transport layer stays thin and
tests can check the math without a server (docs/contract.md).
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

OFFER_1 = "OFFER_1"
OFFER_2 = "OFFER_2"
OFFER_2_THRESHOLD = 200.0
RESP_CAP = 0.9
# Largest {"instances": [...]} a batch route accepts; past it the request gets a 422.
MAX_BATCH_SIZE = 1000


# Infinity and NaN are refused by pydantic-core itself (no Python validator runs per value).
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

class Features(BaseModel):
    """The 8 features of docs/contract.md, as the ATS and RESP endpoints receive them."""

    model_config = ConfigDict(extra="ignore")

    AVG_POINTS_BOUGHT: FiniteFloat
    AVG_REVENUE_USD: FiniteFloat
    LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT: FiniteFloat
    LAST_3_TRANSACTIONS_AVG_REVENUE_USD: FiniteFloat
    PCT_BUY_TRANSACTIONS: float = Field(ge=0, le=1)
    PCT_GIFT_TRANSACTIONS: float = Field(ge=0, le=1)
    PCT_REDEEM_TRANSACTIONS: float = Field(ge=0, le=1)
    DAYS_SINCE_LAST_TRANSACTION: int = Field(ge=0)


class Prediction(BaseModel):
    """What the offer endpoint decides on: both model outputs for one member."""

    ats_prediction: FiniteFloat
    resp_prediction: FiniteFloat


class PredictionResponse(BaseModel):
    prediction: float


class OfferResponse(BaseModel):
    offer: str


class FeaturesBatch(BaseModel):
    """A batch route's body, the Vertex AI / TF Serving convention: ``{"instances": [...]}``."""

    instances: list[Features] = Field(min_length=1, max_length=MAX_BATCH_SIZE)


class PredictionBatch(BaseModel):
    instances: list[Prediction] = Field(min_length=1, max_length=MAX_BATCH_SIZE)


class PredictionsResponse(BaseModel):
    """Answers in the order of the instances, so the caller matches them by position."""

    predictions: list[float]


class OffersResponse(BaseModel):
    predictions: list[str]


def ats(features: Features) -> float:
    """Average transaction size: recent volume weighted by how much the member spends."""
    volume = (
        0.7 * features.LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT
        + 0.3 * features.AVG_POINTS_BOUGHT
    )
    weight = max(
        0.0,
        features.PCT_BUY_TRANSACTIONS
        + features.PCT_GIFT_TRANSACTIONS
        - features.PCT_REDEEM_TRANSACTIONS,
    )
    return abs(volume * weight)


def resp(features: Features) -> float:
    """Response propensity: activity mix times revenue, decayed by days since last use."""
    p = (
        0.4 * features.PCT_BUY_TRANSACTIONS
        + 0.3 * features.PCT_GIFT_TRANSACTIONS
        + 0.3 * features.PCT_REDEEM_TRANSACTIONS
    )
    r = (
        0.3 * features.AVG_REVENUE_USD
        + 0.7 * features.LAST_3_TRANSACTIONS_AVG_REVENUE_USD
    ) / 100
    d = 1 / (features.DAYS_SINCE_LAST_TRANSACTION + 1)
    return min(RESP_CAP, 1000 * p * r * d)


def offer(prediction: Prediction) -> str:
    """The richer offer goes to members whose expected value clears the threshold."""
    if prediction.ats_prediction * prediction.resp_prediction >= OFFER_2_THRESHOLD:
        return OFFER_2
    return OFFER_1
