"""The reference ML and offer service (docs/contract.md), served by ``uvicorn app:app``.

Transport only: every route validates its body with a pydantic model and hands
it to a pure function in ``prediction.py``. Fault injection for reliability
tests (``faults.py``) is off unless ``FAULT_*`` environment variables are set.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI

import faults
import prediction
from prediction import (
    Features,
    FeaturesBatch,
    OfferResponse,
    OffersResponse,
    Prediction,
    PredictionBatch,
    PredictionResponse,
    PredictionsResponse,
)

app = FastAPI(title="Reference ML and offer service")

_faults = faults.FaultConfig.from_env()
if _faults.active:
    logging.getLogger(__name__).warning("fault injection is ON: %s", _faults)
    app.add_middleware(faults.FaultInjectionMiddleware, config=_faults)


@app.get("/")
def ping() -> dict[str, str]:
    return {"msg": "pong"}


@app.post("/ml/ats/predict", response_model=PredictionResponse)
def predict_ats(features: Features) -> PredictionResponse:
    return PredictionResponse(prediction=prediction.ats(features))


@app.post("/ml/resp/predict", response_model=PredictionResponse)
def predict_resp(features: Features) -> PredictionResponse:
    return PredictionResponse(prediction=prediction.resp(features))


@app.post("/offer/assign", response_model=OfferResponse)
def assign_offer(body: Prediction) -> OfferResponse:
    return OfferResponse(offer=prediction.offer(body))


# Batch routes: one request for many members, answers in the order of the instances.


@app.post("/ml/ats/predict/batch", response_model=PredictionsResponse)
def predict_ats_batch(body: FeaturesBatch) -> PredictionsResponse:
    return PredictionsResponse(predictions=[prediction.ats(f) for f in body.instances])


@app.post("/ml/resp/predict/batch", response_model=PredictionsResponse)
def predict_resp_batch(body: FeaturesBatch) -> PredictionsResponse:
    return PredictionsResponse(predictions=[prediction.resp(f) for f in body.instances])


@app.post("/offer/assign/batch", response_model=OffersResponse)
def assign_offer_batch(body: PredictionBatch) -> OffersResponse:
    return OffersResponse(predictions=[prediction.offer(p) for p in body.instances])
