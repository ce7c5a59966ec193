"""Partner configuration: one YAML file per partner in ``partner_options/``, validated at start-up.

Onboarding a partner is a new file, never new code, so everything that differs
between partners (columns, features, endpoints, request shapes, auth, call
policy) is a field here. A bad file fails before the pipeline runs with one
line naming the file, the field and the problem.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from transforms.features import REGISTRY, SPEC_FEATURES

PARTNER_DIR = Path(__file__).resolve().parent.parent / "partner_options"


class ConfigError(Exception):
    """A start-up problem the user can fix; the CLI prints it as one line and exits 2."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Columns(_Strict):
    """Names of the five export columns in this partner's header."""

    member_id: str = "MEMBER_ID"
    timestamp: str = "LAST_TRANSACTION_TS"
    type: str = "LAST_TRANSACTION_TYPE"
    points: str = "LAST_TRANSACTION_POINTS_BOUGHT"
    revenue: str = "LAST_TRANSACTION_REVENUE_USD"


class InputConfig(_Strict):
    columns: Columns = Columns()
    delimiter: str = Field(",", min_length=1, max_length=1)
    # "iso" accepts `YYYY-MM-DD HH:MM:SS` and ISO 8601 with T, Z or an offset;
    # anything else is a strptime format tried in order.
    timestamp_formats: list[str] = Field(default_factory=lambda: ["iso"], min_length=1)
    encoding: Literal["utf-8"] = "utf-8"


class FeatureSpec(_Strict):
    """A registry feature and the name the partner's endpoints expect it under."""

    name: str
    send_as: str | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in REGISTRY:
            raise ValueError(f"unknown feature {value!r}; known: {', '.join(sorted(REGISTRY))}")
        return value

    @property
    def wire_name(self) -> str:
        return self.send_as or self.name


class RequestShape(_Strict):
    """How the features are laid out in an ATS/RESP request body."""

    nest_under: str | None = None  # e.g. "features" -> {"features": {...}}
    extra_fields: dict[str, str | int | float | bool] = Field(default_factory=dict)


class Endpoint(_Strict):
    path: str
    response_field: str = "prediction"
    batch_path: str | None = None

    @field_validator("path", "batch_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value


class OfferEndpoint(Endpoint):
    response_field: str = "offer"
    ats_field: str = "ats_prediction"
    resp_field: str = "resp_prediction"
    offers: list[str] = Field(default_factory=lambda: ["OFFER_1", "OFFER_2"], min_length=1)


class Endpoints(_Strict):
    base_url: str = "http://127.0.0.1:8000"
    ats: Endpoint = Endpoint(path="/ml/ats/predict")
    resp: Endpoint = Endpoint(path="/ml/resp/predict")
    offer: OfferEndpoint = OfferEndpoint(path="/offer/assign")
    request: RequestShape = RequestShape()
    batch: bool = False  # use the batch_path routes ({"instances": [...]})
    max_batch_size: int = Field(100, ge=1)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {value!r}")
        return value.rstrip("/")


class Auth(_Strict):
    """A header whose secret value comes from an environment variable, never from the file."""

    header: str
    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class CallPolicy(_Strict):
    connect_timeout_s: float = Field(3.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(0.1, ge=0)
    backoff_max_s: float = Field(10.0, ge=0)
    backoff_jitter_s: float = Field(0.1, ge=0)
    batch_size: int = Field(64, ge=1)
    concurrency: int = Field(16, ge=1, le=512)
    rate_limit_per_s: float | None = Field(None, gt=0)
    adaptive_throttling: bool = True


class PartnerConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    input: InputConfig = InputConfig()
    features: list[FeatureSpec] = Field(
        default_factory=lambda: [FeatureSpec(name=n) for n in SPEC_FEATURES], min_length=1
    )
    endpoints: Endpoints = Endpoints()
    auth: Auth | None = None
    calls: CallPolicy = CallPolicy()
    members_without_transactions: Literal["skip_calls"] = "skip_calls"

    @field_validator("features", mode="before")
    @classmethod
    def _names_or_specs(cls, value):
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _distinct(self) -> "PartnerConfig":
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("features: a feature is listed twice")
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def with_endpoint_url(self, url: str | None) -> "PartnerConfig":
        """Replace scheme, host and port of every endpoint (the base path is kept)."""
        if not url:
            return self
        new = urlsplit(Endpoints._url(url))
        old = urlsplit(self.endpoints.base_url)
        base = urlunsplit((new.scheme, new.netloc, old.path, "", ""))
        endpoints = self.endpoints.model_copy(update={"base_url": base.rstrip("/")})
        return self.model_copy(update={"endpoints": endpoints})

    def url(self, endpoint: Literal["ats", "resp", "offer"], batch: bool = False) -> str:
        ep = getattr(self.endpoints, endpoint)
        return self.endpoints.base_url + (ep.batch_path if batch else ep.path)

    def auth_headers(self) -> dict[str, str]:
        """The auth header, read from the environment at the moment it is needed."""
        if self.auth is None:
            return {}
        secret = os.environ.get(self.auth.env)
        if not secret:
            raise ConfigError(
                f"partner {self.name}: environment variable {self.auth.env} "
                f"(auth header {self.auth.header}) is not set"
            )
        return {self.auth.header: secret}


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load(path: str | os.PathLike) -> PartnerConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"partner file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"partner file {path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"partner file {path}{where}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"partner file {path}: expected a mapping at the top level")
    try:
        return PartnerConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"partner file {path}: {_field_path(err['loc'])}: {msg}{more}") from None


def load_named(name: str) -> PartnerConfig:
    path = PARTNER_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PARTNER_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown partner {name!r}: no {path}; known partners: {known}")
    return load(path)


def available() -> list[str]:
    return sorted(p.stem for p in PARTNER_DIR.glob("*.yaml"))
