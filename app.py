"""The reference ML and offer service (docs/contract.md), served by ``uvicorn app:app``.

Transport only: every route validates its body with a pydantic model and hands
it to a pure function in ``prediction.py``. Routes are ``async def``: their work
is arithmetic (microseconds per member, a few milliseconds for a batch of 1,000),
so they run on the event loop rather than hop to the thread pool, which was half
of the server's CPU per request. Fault injection for reliability
tests (``faults.py``) is off unless ``FAULT_*`` environment variables are set.
"""
from __future__ import annotations

import json
import logging
import math

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

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


class JSONRequest(Request):
    """A request whose JSON body is parsed by pydantic-core's parser.

    Parsing is most of a batch route's time (a list of 500 members' features):
    ``pydantic_core.from_json`` takes less than half of what ``json.loads`` does,
    with the same result. A body that is not JSON still gets FastAPI's 422.
    """

    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body)
            except ValueError as exc:
                raise json.JSONDecodeError(str(exc), body.decode("utf-8", "replace"), 0) from exc
        return self._json


class JSONRoute(APIRoute):
    """Every route of the service reads its body through ``JSONRequest`` (FastAPI's custom route class)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            return await handler(JSONRequest(request.scope, request.receive))

        return route


def _json_safe(value):
    """``value`` with the floats JSON cannot carry (Infinity, NaN) written as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


app = FastAPI(title="Reference ML and offer service")
app.router.route_class = JSONRoute


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, which could not be written when the bad value was Infinity or NaN."""
    return JSONResponse(status_code=422, content={"detail": _json_safe(jsonable_encoder(exc.errors()))})

_faults = faults.FaultConfig.from_env()
if _faults.active:
    logging.getLogger(__name__).warning("fault injection is ON: %s", _faults)
    app.add_middleware(faults.FaultInjectionMiddleware, config=_faults)


@app.get("/")
async def ping() -> dict[str, str]:
    return {"msg": "pong"}


@app.post("/ml/ats/predict", response_model=PredictionResponse)
async def predict_ats(features: Features) -> PredictionResponse:
    return PredictionResponse(prediction=prediction.ats(features))


@app.post("/ml/resp/predict", response_model=PredictionResponse)
async def predict_resp(features: Features) -> PredictionResponse:
    return PredictionResponse(prediction=prediction.resp(features))


@app.post("/offer/assign", response_model=OfferResponse)
async def assign_offer(body: Prediction) -> OfferResponse:
    return OfferResponse(offer=prediction.offer(body))


# Batch routes: one request for many members, answers in the order of the instances.


@app.post("/ml/ats/predict/batch", response_model=PredictionsResponse)
async def predict_ats_batch(body: FeaturesBatch) -> PredictionsResponse:
    return PredictionsResponse(predictions=[prediction.ats(f) for f in body.instances])


@app.post("/ml/resp/predict/batch", response_model=PredictionsResponse)
async def predict_resp_batch(body: FeaturesBatch) -> PredictionsResponse:
    return PredictionsResponse(predictions=[prediction.resp(f) for f in body.instances])


@app.post("/offer/assign/batch", response_model=OffersResponse)
async def assign_offer_batch(body: PredictionBatch) -> OffersResponse:
    return OffersResponse(predictions=[prediction.offer(p) for p in body.instances])
