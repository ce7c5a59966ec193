"""Partner configuration: one YAML file per partner in ``partner_options/``, validated at start-up.

Onboarding a partner is a new file, never new code, so everything that differs
between partners (columns, features, endpoints, request shapes, auth, call
policy) is a field here. A bad file fails before the pipeline runs with one
line naming the file, the field and the problem.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lantern.errors import ConfigError
from lantern.features import REGISTRY, SPEC_FEATURES, TYPE_CODES

PARTNER_DIR = Path(__file__).resolve().parent.parent / "partner_options"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Columns(_Strict):
    """Names of the five export columns in this partner's header."""

    member_id: str = Field("MEMBER_ID", description="column holding the member id")
    timestamp: str = Field("LAST_TRANSACTION_TS", description="column holding the transaction time")
    type: str = Field("LAST_TRANSACTION_TYPE", description="column holding buy / gift / redeem")
    points: str = Field("LAST_TRANSACTION_POINTS_BOUGHT", description="column holding the points")
    revenue: str = Field("LAST_TRANSACTION_REVENUE_USD", description="column holding the revenue in USD")


def _spellings(value):
    return [value] if isinstance(value, str) else value


def _normal(spelling: str) -> str:
    """How a type value is compared: trimmed and lower-cased, as the parser reads it."""
    return spelling.strip().lower()


class TypeValues(_Strict):
    """The partner's spellings of the three transaction types, matched case-insensitively after trimming."""

    buy: list[str] = Field(default_factory=lambda: ["buy"], min_length=1,
                           description="spellings of a buy, e.g. `[Purchase, P]`")
    gift: list[str] = Field(default_factory=lambda: ["gift"], min_length=1, description="spellings of a gift")
    redeem: list[str] = Field(default_factory=lambda: ["redeem"], min_length=1,
                              description="spellings of a redemption")

    _lists = field_validator("buy", "gift", "redeem", mode="before")(_spellings)

    @model_validator(mode="after")
    def _each_spelling_once(self) -> TypeValues:
        seen: dict[str, str] = {}
        for kind in TYPE_CODES:
            for spelling in getattr(self, kind):
                key = _normal(spelling)
                if not key:
                    raise ValueError(f"{kind}: an empty spelling")
                if key in seen:
                    where = "twice" if seen[key] == kind else f"to both {seen[key]} and {kind}"
                    raise ValueError(f"{spelling!r} is mapped {where} (spellings are compared "
                                     "case-insensitively after trimming)")
                seen[key] = kind
        return self

    def codes(self) -> dict[str, int]:
        """Normalised spelling -> type code (lantern.features.TYPE_CODES values)."""
        return {_normal(s): code for kind, code in TYPE_CODES.items() for s in getattr(self, kind)}


class InputConfig(_Strict):
    columns: Columns = Field(Columns(), description="column names of the five fields")
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field delimiter, one character")
    timestamp_formats: list[str] = Field(
        default_factory=lambda: ["iso"], min_length=1,
        description="tried in order: `iso` (`YYYY-MM-DD HH:MM:SS`, ISO 8601 with T, Z or an offset) "
        "or a strptime format such as `%d/%m/%Y %H:%M`; naive times are UTC",
    )
    header: bool = Field(True, description="true: each file starts with a header line naming the columns")
    header_columns: list[str] | None = Field(
        None, description="with `header: false`: the column names of the headerless files, in order",
    )
    transaction_id_column: str | None = Field(
        None, description="streaming: the column holding a transaction id; a transaction whose id its member "
        "was already given is a duplicate, not folded again (docs/streaming.md)",
    )

    type_values: TypeValues = Field(
        TypeValues(), description="the spellings of buy, gift and redeem in the type column (each a list)",
    )
    max_dead_letter_ratio: float = Field(
        0.05, ge=0, le=1, description="dead letters / rows read above which the run exits 4 unpublished "
        "(`--max-dead-letter-ratio` overrides; 1.0: no limit)",
    )

    @model_validator(mode="after")
    def _headerless_needs_columns(self) -> InputConfig:
        if not self.header and not self.header_columns:
            raise ValueError("header_columns is required when header is false")
        return self

    def type_codes(self) -> dict[str, int]:
        """The type vocabulary as the parser reads it: trimmed lower-case spelling -> type code."""
        return self.type_values.codes()


class FeatureSpec(_Strict):
    """A registry feature and the name the partner's endpoints expect it under."""

    name: str = Field(description="a feature of the registry (see the list below)")
    send_as: str | None = Field(None, description="field name in the request body (default: the name)")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in REGISTRY:
            raise ValueError(f"unknown feature {value!r}; known: {', '.join(sorted(REGISTRY))}")
        return value


class RequestShape(_Strict):
    """How the features are laid out in an ATS/RESP request body."""

    nest_under: str | None = Field(None, description='put the features under this key: {"KEY": {...}}')
    field_case: Literal["as_is", "lower"] = Field("as_is", description="`lower` lowercases every feature field name")
    extra_fields: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="constant fields added to every ATS/RESP body",
    )


def _absolute_path(value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    return value


class Endpoint(_Strict):
    path: str = Field(description="URL path of the route, starting with /")
    response_field: str = Field("prediction", description="response field holding the number")
    batch_path: str | None = Field(None, description="route taking {\"instances\": [...]} (batch mode)")

    _paths = field_validator("path", "batch_path")(_absolute_path)


class OfferEndpoint(_Strict):
    path: str = Field(description="URL path of the offer route")
    response_field: str = Field("offer", description="response field holding the offer")
    batch_path: str | None = Field(None, description="batch route of the offer endpoint")
    ats_field: str = Field("ats_prediction", description="request field for the ATS prediction")
    resp_field: str = Field("resp_prediction", description="request field for the RESP prediction")
    offers: list[str] = Field(
        default_factory=lambda: ["OFFER_1", "OFFER_2"], min_length=1,
        description="the offers the endpoint may answer; anything else is a failure",
    )

    _paths = field_validator("path", "batch_path")(_absolute_path)


class Endpoints(_Strict):
    base_url: str = Field("http://127.0.0.1:8000", description="scheme, host, port (and base path)")
    ats: Endpoint = Field(Endpoint(path="/ml/ats/predict"), description="the ATS model")
    resp: Endpoint = Field(Endpoint(path="/ml/resp/predict"), description="the RESP model")
    offer: OfferEndpoint = Field(OfferEndpoint(path="/offer/assign"), description="the offer endpoint")
    request: RequestShape = Field(RequestShape(), description="shape of the ATS/RESP request body")
    batch: bool = Field(False, description="call the batch_path routes, one request per batch of members")
    max_batch_size: int = Field(100, ge=1, description="the largest batch the batch routes accept")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {value!r}")
        try:
            _ = parts.port  # raises ValueError for a port that is not a number in range
        except ValueError:
            raise ValueError(f"bad port in URL {value!r}") from None
        return value.rstrip("/")

    @model_validator(mode="after")
    def _batch_paths(self) -> Endpoints:
        if self.batch:
            missing = [k for k in ("ats", "resp", "offer") if getattr(self, k).batch_path is None]
            if missing:
                raise ValueError(f"batch is true but {', '.join(missing)} has no batch_path")
        return self


# A Secret Manager version, e.g. projects/acme/secrets/acme-ml-token/versions/latest
VERSION_NAME_PATTERN = r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$"


class Auth(_Strict):
    """A header whose secret value comes from an environment variable, never from the file.

    Where the variable is not set (Dataflow workers), the value is read from the
    Secret Manager version named by ``secret`` (given with ``--auth-secret``).
    """

    header: str = Field(description="request header carrying the secret, e.g. X-Api-Key")
    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="NAME of the environment variable holding it")
    secret: str | None = Field(None, pattern=VERSION_NAME_PATTERN,
                               description="Secret Manager version holding it where the variable is unset")


class CallPolicy(_Strict):
    connect_timeout_s: float = Field(3.0, gt=0, description="TCP connect timeout per attempt")
    read_timeout_s: float = Field(10.0, gt=0, description="longest wait for the next bytes of an answer, per read")
    attempt_timeout_s: float = Field(
        30.0, gt=0, description="longest one attempt may take in all: connect, send and the whole answer")
    member_timeout_s: float = Field(
        120.0, gt=0, description="longest a member's calls may take in all, across attempts and the waits "
                                 "between them (not counting waits for a free slot)")
    max_response_bytes: int = Field(
        1_048_576, ge=1024, description="largest answer read, before and after decompression; a larger one "
                                        "fails the call (not retried)")
    redirects: Literal["none", "same_origin"] = Field(
        "none", description="redirects followed: none, or same_origin (never another origin, which would "
                            "receive the auth header)")
    retries: int = Field(8, ge=0, le=20, description="retries after the first attempt (429, 5xx, timeouts)")
    connect_retries: int = Field(
        2, ge=0, le=20, description="of those, retries when no connection can be made (refused, connect timeout)")
    backoff_s: float = Field(0.1, ge=0, description="exponential backoff factor")
    backoff_max_s: float = Field(2.0, ge=0, description="longest wait between attempts")
    backoff_jitter_s: float = Field(0.1, ge=0, description="random jitter added to each wait")
    retry_after_max_s: int = Field(30, ge=0, description="longest wait a server's Retry-After can ask for")
    batch_size: int | None = Field(
        None, ge=1, description="no effect (per-member calls are not batched); accepted so older files load, "
                                "with a warning")
    concurrency: int = Field(
        256, ge=1, le=1024,
        description="most calls in flight per endpoint and worker; the adaptive limit stays at or below it")
    adaptive_concurrency: bool = Field(
        True, description="learn the calls in flight from latency and errors; false pins them at `concurrency`")
    rate_limit_per_s: float | None = Field(
        None, gt=0, description="max requests per second per SDK worker process, across all its threads")
    job_rate_limit_per_s: float | None = Field(
        None, gt=0, description="max requests per second for the whole job: each SDK process takes an equal share "
                                "(this divided by the most SDK processes the job can run)")
    adaptive_throttling: bool = Field(True, description="refuse calls locally while most calls to an endpoint fail")




class PartnerConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="partner id; the file is partner_options/NAME.yaml")
    description: str = Field("", description="free text for humans")
    input: InputConfig = Field(InputConfig(), description="how to read the export")
    features: list[FeatureSpec] = Field(
        default_factory=lambda: [FeatureSpec(name=n) for n in SPEC_FEATURES], min_length=1,
        description="features to compute and send, by name or {name, send_as}; default: the contract's 8",
    )
    endpoints: Endpoints = Field(Endpoints(), description="where and how to call the models")
    auth: Auth | None = Field(None, description="auth header for every call; omit for none")
    calls: CallPolicy = Field(CallPolicy(), description="timeouts, retries, batching, concurrency")
    members_without_transactions: Literal["skip_calls"] = Field(
        "skip_calls", description="members with only an id get status NO_TRANSACTIONS and no calls",
    )
    transactions_after_as_of: Literal["dead_letter"] = Field(
        "dead_letter", description="a transaction dated after the as-of date is a dead letter AFTER_AS_OF",
    )

    @field_validator("features", mode="before")
    @classmethod
    def _names_or_specs(cls, value):
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _distinct(self) -> PartnerConfig:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("features: a feature is listed twice")
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def wire_names(self) -> dict[str, str]:
        """Feature name -> field name in the request body."""
        lower = self.endpoints.request.field_case == "lower"
        out = {}
        for spec in self.features:
            wire = spec.send_as or spec.name
            out[spec.name] = wire.lower() if lower else wire
        return out

    def with_endpoint_url(self, url: str | None) -> PartnerConfig:
        """Replace scheme, host and port of every endpoint (the base path is kept)."""
        if not url:
            return self
        try:
            new = urlsplit(Endpoints._url(url))
        except ValueError as exc:
            raise ConfigError(f"--endpoint-url: {exc}") from None
        old = urlsplit(self.endpoints.base_url)
        base = urlunsplit((new.scheme, new.netloc, old.path, "", ""))
        endpoints = self.endpoints.model_copy(update={"base_url": base.rstrip("/")})
        return self.model_copy(update={"endpoints": endpoints})

    def with_auth_secret(self, resource: str | None) -> PartnerConfig:
        """Read the auth header's value from this Secret Manager version when the env var is unset."""
        if not resource:
            return self
        if self.auth is None:
            raise ConfigError(f"--auth-secret: partner {self.name} sends no auth header (no auth: in its file)")
        try:
            auth = Auth.model_validate({**self.auth.model_dump(), "secret": resource})
        except ValidationError:
            raise ConfigError(
                f"--auth-secret {resource!r} is not a Secret Manager version "
                "(projects/PROJECT/secrets/NAME/versions/VERSION)"
            ) from None
        return self.model_copy(update={"auth": auth})

    def with_process_share(self, processes: int) -> PartnerConfig:
        """Each SDK process's rate cap: ``calls.rate_limit_per_s``, or its share of
        ``calls.job_rate_limit_per_s`` over at most ``processes`` processes if that is lower."""
        job = self.calls.job_rate_limit_per_s
        if not job:
            return self
        share = job / max(1, processes)
        own = self.calls.rate_limit_per_s
        calls = self.calls.model_copy(update={"rate_limit_per_s": share if own is None else min(own, share)})
        return self.model_copy(update={"calls": calls})

    def notices(self) -> list[str]:
        """Settings that load but do nothing, said once a run's logging is set up (not at load:
        a start-up error must stay one line)."""
        if self.calls.batch_size is not None:
            return ["partner file: calls.batch_size has no effect (per-member calls are not batched); remove it"]
        return []

    def url(self, endpoint: Literal["ats", "resp", "offer"], batch: bool = False) -> str:
        ep = getattr(self.endpoints, endpoint)
        return self.endpoints.base_url + (ep.batch_path if batch else ep.path)

    def auth_headers(self) -> dict[str, str]:
        """The auth header, read from the environment at the moment it is needed."""
        if self.auth is None:
            return {}
        secret = os.environ.get(self.auth.env)
        if not secret and self.auth.secret:
            from lantern import secret_manager

            secret = secret_manager.access(self.auth.secret)
        if not secret:
            raise ConfigError(
                f"partner {self.name}: environment variable {self.auth.env} "
                f"(auth header {self.auth.header}) is not set, and no --auth-secret names a Secret Manager version"
            )
        return {self.auth.header: secret}


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load(path: str | os.PathLike) -> PartnerConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"partner file {path} does not exist (shipped partners, for --partner NAME: "
                          f"{', '.join(available())})") from None
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
        raise ConfigError(f"unknown partner {name!r}: no {path}; available partners: {', '.join(available())} "
                          "(or give any partner file with --partner-config FILE)")
    return load(path)


def available() -> list[str]:
    return sorted(p.stem for p in PARTNER_DIR.glob("*.yaml"))


def _type_name(annotation) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if args and origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args)
    if args:
        return f"{origin.__name__} of {' to '.join(_type_name(a) for a in args)}"
    return "null" if annotation is type(None) else annotation.__name__


def schema_rows(model: type[BaseModel] = PartnerConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(field path, type, default, description) for every field, nested models flattened."""
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = field.annotation
        nested = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if nested is None and getattr(annotation, "__args__", None):
            models = [a for a in annotation.__args__ if isinstance(a, type) and issubclass(a, BaseModel)]
            nested = models[0] if models else None
        if nested is not None and nested is not FeatureSpec:
            required = "required" if field.is_required() else ("optional" if field.default is None else "see below")
            rows.append((path, nested.__name__, required, field.description or ""))
            rows.extend(schema_rows(nested, path + "."))
            continue
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = repr(field.default_factory())
            if nested is FeatureSpec or "FeatureSpec" in default:
                default = "the contract's 8 features"
        else:
            default = repr(field.default)
        type_text = "list of feature names or {name, send_as}" if name == "features" else _type_name(annotation)
        rows.append((path, type_text, default, field.description or ""))
    return rows


def schema_markdown() -> str:
    """The partner-file reference table of docs/partners.md, generated so it cannot drift."""
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, type_text, default, description in schema_rows():
        lines.append(f"| `{path}` | {type_text} | {default} | {description} |".replace("\n", " "))
    lines.append("")
    lines.append("Features of the registry: " + ", ".join(f"`{name}`" for name in REGISTRY) + ".")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m lantern.partner: print the schema table for docs/partners.md
    print(schema_markdown())  # noqa: T201 - a command-line entry point
