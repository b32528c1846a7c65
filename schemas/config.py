"""The configuration (README, "Configuration"): the seed's ``autopilot:`` block as
written, plus the ``bus``, ``storage``, ``business_logic``, ``parameters``,
``kpis``, ``golden`` and ``telemetry`` sections.

Every key is optional and every default is the seed's. Durations may be
fractional minutes, so a test can run a canary for seconds. A file that does not
validate is refused with :class:`ConfigError` naming key, value and rule.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

_PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_KPI_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hhmm(value: str) -> str:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", value)
    if not match:
        raise ValueError("must be a UTC time of day as HH:MM (00:00 to 23:59)")
    return value


class SlidingBoundsConfig(_Strict):
    expansion_rate_per_week: float = Field(0.05, ge=0, le=1)
    contraction_rate_after_rollback: float = Field(0.25, ge=0, lt=1)
    stability_threshold_days: int = Field(7, ge=1)
    rollback_threshold: int = Field(3, ge=1)
    anti_windup_enabled: bool = True
    # Beyond the seed: the first sliding range is current value ± this share of the hard span.
    initial_half_width_fraction: float = Field(0.1, gt=0, le=0.5)


class DriftMonitoringConfig(_Strict):
    prediction_error_threshold_pct: float = Field(30.0, gt=0)
    rollback_rate_threshold_pct: float = Field(10.0, gt=0, le=100)
    monitoring_window_days: int = Field(14, ge=1)
    pause_duration_hours: float = Field(48, gt=0)
    max_pause_duration_days: float = Field(7, gt=0)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_GITHUB_LOGIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_GITHUB_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


class GitHubConfig(_Strict):
    """Where the weekly triage files its issues (``incident_triage.github``; used only when
    ``github_integration_enabled``). The token is never part of the configuration: it is read
    from the environment variable named by ``token_env`` when an issue is sent."""

    repository: str | None = None                    # "owner/name"
    api_url: str = "https://api.github.com"          # GitHub Enterprise: https://HOST/api/v3
    labels: list[str] = Field(default_factory=lambda: ["autopilot", "triage"])
    assignees: list[str] = []
    token_env: str = "VVTV_AUTOPILOT_GITHUB_TOKEN"
    timeout_seconds: float = Field(10.0, gt=0, le=300)   # one HTTP request
    max_attempts: int = Field(4, ge=1, le=10)            # per request, on 5xx / timeouts / rate limits
    max_wait_seconds: float = Field(120.0, ge=0, le=3600)  # longest rate-limit wait honoured at once

    @model_validator(mode="before")
    @classmethod
    def _no_token(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in ("token", "api_token", "github_token")):
            raise ValueError("a token may not be written in the configuration: put it in the environment "
                             "variable named by token_env (default VVTV_AUTOPILOT_GITHUB_TOKEN)")
        return data

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: str | None) -> str | None:
        if value is not None and not _GITHUB_REPO.match(value):
            raise ValueError("must be 'owner/name'")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL, e.g. https://api.github.com or https://HOST/api/v3")
        return value.rstrip("/")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if not label.strip() or len(label) > 50 or "," in label:
                raise ValueError(f"label {label!r} must be 1-50 characters without a comma")
        return value

    @field_validator("assignees")
    @classmethod
    def _assignees(cls, value: list[str]) -> list[str]:
        for login in value:
            if not _GITHUB_LOGIN.match(login):
                raise ValueError(f"assignee {login!r} is not a GitHub login")
        return value

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError("must be the name of an environment variable")
        return value


class IncidentTriageConfig(_Strict):
    weekly_schedule_utc: str = "Sunday 02:00"
    analysis_window_days: int = Field(7, ge=1)
    failure_threshold_for_patch: int = Field(3, ge=1)
    github_integration_enabled: bool = False
    # Beyond the seed: where the issues go when the switch is on.
    github: GitHubConfig = GitHubConfig()

    @model_validator(mode="after")
    def _github_target(self) -> "IncidentTriageConfig":
        if self.github_integration_enabled and self.github.repository is None:
            raise ValueError("github_integration_enabled needs incident_triage.github.repository ('owner/name')")
        return self

    @field_validator("weekly_schedule_utc")
    @classmethod
    def _weekly(cls, value: str) -> str:
        parts = value.split()
        if len(parts) != 2 or parts[0].lower() not in _DAYS:
            raise ValueError("must be '<Weekday> HH:MM', e.g. 'Sunday 02:00'")
        _hhmm(parts[1])
        return value


class AutopilotConfig(_Strict):
    enabled: bool = True
    daily_schedule_utc: str = "03:00"
    canary_duration_minutes: float = Field(60, gt=0)
    canary_traffic_percentage: float = Field(0.2, gt=0, lt=1)
    statistical_confidence_threshold: float = Field(0.95, ge=0.5, lt=1)
    max_execution_time_minutes: float = Field(10, gt=0)
    emergency_pause: bool = False
    manual_override_hours: float = Field(24, gt=0, le=168)
    # Beyond the seed (documented in README):
    check_interval_minutes: float = Field(1.0, gt=0)
    analysis_window_hours: float = Field(24, gt=0)
    min_samples_per_arm: int = Field(30, ge=2)
    apply_timeout_seconds: float = Field(10, gt=0)
    inconclusive_action: Literal["rollback", "extend"] = "rollback"
    validation_failures_before_pause: int = Field(2, ge=1)
    sliding_bounds: SlidingBoundsConfig = SlidingBoundsConfig()
    drift_monitoring: DriftMonitoringConfig = DriftMonitoringConfig()
    incident_triage: IncidentTriageConfig = IncidentTriageConfig()
    # Power before the canary (handlers/power.py, bench/GATE.md "Power"): what to do when a
    # guardrail's non-inferiority test has < 80 % power at its margin. "run": run the planned
    # canary anyway and record the power (the seed's behaviour); "lengthen": run it for the
    # duration that reaches 80 %, capped at max_canary_duration_minutes; "skip": no canary
    # this cycle. max_canary_duration_minutes: None = canary_duration_minutes (a canary
    # longer than planned must be a stated choice).
    underpowered_action: Literal["run", "lengthen", "skip"] = "run"
    max_canary_duration_minutes: float | None = Field(None, gt=0)
    # The optimizer's step (README "Sliding bounds and the optimizer"): "canary_mde" sizes it so
    # the canary can see its effect (the improvement score's MDE, planned before the proposal)
    # and proposes no change when no safe candidate reaches it; "none": the step as before.
    optimizer_step_sizing: Literal["canary_mde", "none"] = "canary_mde"

    @field_validator("daily_schedule_utc")
    @classmethod
    def _daily(cls, value: str) -> str:
        return _hhmm(value)

    @model_validator(mode="after")
    def _max_canary(self) -> "AutopilotConfig":
        m = self.max_canary_duration_minutes
        if m is not None and m < self.canary_duration_minutes:
            raise ValueError(f"max_canary_duration_minutes = {m} must be at least canary_duration_minutes "
                             f"({self.canary_duration_minutes})")
        return self

    @property
    def max_canary_minutes(self) -> float:
        """The longest canary allowed (``max_canary_duration_minutes`` or the planned duration)."""
        m = self.max_canary_duration_minutes
        return self.canary_duration_minutes if m is None else m


class StreamNames(_Strict):
    metrics: str = "VVTV_METRICS"
    alerts: str = "VVTV_ALERTS"
    commands: str = "VVTV_AUTOPILOT_CMD"
    events: str = "VVTV_AUTOPILOT_EVT"
    timers: str = "VVTV_AUTOPILOT_TIMER"
    dlq: str = "VVTV_AUTOPILOT_DLQ"
    # High availability (README, "Deployment: replicas"): the journal of committed
    # inputs, the leader's lease (a KV bucket) and the state snapshots (an object store).
    journal: str = "VVTV_AUTOPILOT_JOURNAL"
    lease: str = "VVTV_AUTOPILOT_LEASE"
    snapshots: str = "VVTV_AUTOPILOT_SNAPSHOTS"

    @model_validator(mode="after")
    def _names(self) -> "StreamNames":
        for key, name in self.model_dump().items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"stream name {key}={name!r} may only use letters, digits, '_' and '-'")
        return self


class BusConfig(_Strict):
    url: str | None = None
    prefix: str = Field("vvtv", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    # Where replies to this service's requests (JetStream API and acks, apply and
    # golden replies) and its metric deliveries arrive. A per-user prefix lets the
    # server's permissions keep every other user out of them (infra/nats-permissions.conf).
    inbox_prefix: str = Field("_INBOX", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    streams: StreamNames = StreamNames()
    request_timeout_seconds: float = Field(5.0, gt=0)
    # High availability (README, "Deployment: replicas"). Replicas of every stream,
    # bucket and object store the autopilot creates (3 on a three-node cluster).
    stream_replicas: int = Field(1, ge=1, le=5)
    # The leader's lease: it expires lease_ttl_seconds after its holder's last renewal;
    # the holder renews every lease_renew_seconds and steps down on the first failure.
    lease_ttl_seconds: float = Field(10.0, ge=1.0, le=300.0)
    lease_renew_seconds: float = Field(2.0, gt=0)
    # The leader puts a snapshot of its store in the object store every N journal
    # entries (0: never), so a new replica need not replay the journal from its start.
    snapshot_every_entries: int = Field(1000, ge=0)

    @model_validator(mode="after")
    def _lease(self) -> "BusConfig":
        if self.lease_renew_seconds * 2.5 > self.lease_ttl_seconds:
            raise ValueError(f"lease_renew_seconds ({self.lease_renew_seconds}) must be at most 0.4 x lease_ttl_seconds "
                             f"({self.lease_ttl_seconds}): a leader renews well inside its lease's TTL")
        return self


class StorageConfig(_Strict):
    data_dir: Path = Path("./autopilot-data")


class BusinessLogicConfig(_Strict):
    path: Path | None = None


class ParameterSpec(_Strict):
    min: float
    max: float

    @model_validator(mode="after")
    def _range(self) -> "ParameterSpec":
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("min and max must be finite")
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


# Default non-inferiority margins (relative), chosen for what a one-hour canary can show at
# VVTV's traffic (bench/GATE.md, "Margins"): a guardrail that is a ~2 % rate has a relative SE of
# ~5 % over a one-hour 20 % canary, so only a margin of ~15-20 % reaches 80 % power; an engagement
# KPI with CV ~1 has ~0.7 %, so ~2 %.
DEFAULT_MARGIN_GUARDRAIL = 0.2
DEFAULT_MARGIN_SUCCESS = 0.02
MAX_RELATIVE_MARGIN = 10.0


class KpiSpec(_Strict):
    """One KPI as the gate judges it.

    ``critical``: a guardrail, tested for harm and non-inferiority only; it enters the
    improvement score only with an explicit ``weight`` (default: 0 for a critical KPI, 1
    otherwise). ``margin`` (relative, on the ratio of means: the canary may be up to
    ``(1 + margin)`` x the control in the bad direction of a "decrease" KPI, down to
    ``(1 - margin)`` x for an "increase" one) or ``margin_abs`` (in the KPI's own units, on
    the difference of means): at most one of them may be given; without either the
    relative default applies (``DEFAULT_MARGIN_GUARDRAIL`` for a critical KPI,
    ``DEFAULT_MARGIN_SUCCESS`` otherwise). After validation ``weight`` and ``margin`` are
    always floats (``margin`` stays the relative margin other modules read, even when the
    gate uses ``margin_abs``)."""

    direction: Literal["increase", "decrease"]
    critical: bool = False
    weight: float = Field(1.0, ge=0)
    margin: float = Field(DEFAULT_MARGIN_SUCCESS, ge=0)
    margin_abs: float | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        critical = bool(data.get("critical", False))
        if data.get("weight") is None:
            data["weight"] = 0.0 if critical else 1.0
        if data.get("margin") is not None and data.get("margin_abs") is not None:
            raise ValueError(f"margin = {data['margin']} and margin_abs = {data['margin_abs']}: give at most one "
                             "(margin is relative to the control mean, margin_abs is in the KPI's units)")
        if data.get("margin") is None:
            data["margin"] = DEFAULT_MARGIN_GUARDRAIL if critical else DEFAULT_MARGIN_SUCCESS
        return data

    @model_validator(mode="after")
    def _margin_range(self) -> "KpiSpec":
        m = self.margin
        if not math.isfinite(m) or m > MAX_RELATIVE_MARGIN:
            raise ValueError(f"margin = {m}: a relative margin must be at most {MAX_RELATIVE_MARGIN:g} "
                             f"(5 tolerates a canary up to 6x the control in the bad direction)")
        if self.direction == "increase" and m >= 1.0:
            raise ValueError(f"margin = {m}: on an 'increase' KPI a relative margin must be below 1 "
                             "(1 would tolerate any drop to zero); use margin_abs for a wider tolerance")
        if self.margin_abs is not None and not math.isfinite(self.margin_abs):
            raise ValueError(f"margin_abs = {self.margin_abs}: must be finite")
        return self


class GoldenConfig(_Strict):
    mode: Literal["service", "builtin"] = "service"
    timeout_seconds: float = Field(10.0, gt=0)
    cases_file: Path | None = None


class TelemetryConfig(_Strict):
    exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = None


# --- web dashboard (issue #11) ------------------------------------------------------------


_LISTEN_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


class WebConfig(_Strict):
    """``run --http HOST:PORT`` / ``web.listen``: the read-only dashboard and ``/metrics``.
    Loopback only unless credentials are set: the token is read from the environment
    variable ``token_env`` (never from the file), sent as ``Authorization: Bearer`` or as
    the password of HTTP basic auth for ``basic_auth_user``."""

    listen: str | None = None                      # HOST:PORT; None: no web server
    token_env: str = "VVTV_AUTOPILOT_WEB_TOKEN"
    basic_auth_user: str = "operator"
    refresh_seconds: float = Field(2.0, gt=0, le=300)   # how often the open page refreshes its live parts

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None:
            return value
        m = _LISTEN_RE.match(value)
        if not m or int(m.group(2)) > 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8080 (port 0: any free port)")
        return value


# --- end web dashboard -----------------------------------------------------------------------


def _default_parameters() -> dict[str, ParameterSpec]:
    return {"selection.diversity_weight": ParameterSpec(min=0.1, max=0.6)}


def _default_kpis() -> dict[str, KpiSpec]:
    return {
        "selection_entropy": KpiSpec(direction="increase", critical=False, weight=1.0),
        "error_rate": KpiSpec(direction="decrease", critical=True),
    }


class Config(_Strict):
    autopilot: AutopilotConfig = AutopilotConfig()
    bus: BusConfig = BusConfig()
    storage: StorageConfig = StorageConfig()
    business_logic: BusinessLogicConfig = BusinessLogicConfig()
    parameters: dict[str, ParameterSpec] = Field(default_factory=_default_parameters)
    kpis: dict[str, KpiSpec] = Field(default_factory=_default_kpis)
    golden: GoldenConfig = GoldenConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    web: WebConfig = WebConfig()

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, value: dict[str, ParameterSpec]) -> dict[str, ParameterSpec]:
        for name in value:
            if not _PARAM_RE.match(name):
                raise ValueError(f"parameter name {name!r} must be a dotted path of identifiers")
        # A parameter is a leaf of the card: one that is a prefix path of another
        # would make the other's parent a number and a dict at once.
        for name in value:
            for other in value:
                if other.startswith(name + "."):
                    raise ValueError(f"parameter {name!r} is a prefix of {other!r}: a card cannot hold both "
                                     f"a number at {name!r} and a field inside it")
        return value

    @field_validator("kpis")
    @classmethod
    def _kpi_names(cls, value: dict[str, KpiSpec]) -> dict[str, KpiSpec]:
        if not value:
            raise ValueError("at least one KPI must be configured")
        for name in value:
            if not _KPI_RE.match(name):
                raise ValueError(f"KPI name {name!r} must match [a-z][a-z0-9_]{{0,63}}")
        return value

    @property
    def card_path(self) -> Path:
        return self.business_logic.path or self.storage.data_dir / "business_logic.json"

    def subject(self, tail: str) -> str:
        return f"{self.bus.prefix}.{tail}"


# --- loading --------------------------------------------------------------------------

ENV_PREFIX = "VVTV_AUTOPILOT__"
"""``VVTV_AUTOPILOT__AUTOPILOT__CANARY_DURATION_MINUTES=0.5`` sets
``autopilot.canary_duration_minutes``; the value is read as a YAML scalar."""


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


def _environment_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    tree = dict(raw)
    for name, text in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
            _set_path(tree, path, yaml.safe_load(text) if text else None)
    if env.get("NATS_URL"):
        _set_path(tree, ["bus", "url"], env["NATS_URL"])
    if env.get("VVTV_AUTOPILOT_DATA_DIR"):
        _set_path(tree, ["storage", "data_dir"], env["VVTV_AUTOPILOT_DATA_DIR"])
    return tree


def _redact(key: str, value: Any) -> Any:
    """Secrets never reach an error message: a value under a key naming a token is shown as ***."""
    if "token" in key.rsplit(".", 1)[-1].lower() and not key.endswith("token_env"):
        return "***"
    if isinstance(value, dict):
        return {k: _redact(f"{key}.{k}", v) for k, v in value.items()}
    return value


def _problems(exc: ValidationError) -> list[tuple[str, object, str]]:
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "<top level>"
        rule = err["msg"]
        if err["type"] == "extra_forbidden":
            rule = "unknown key (not part of the configuration)"
        problems.append((key, _redact(key, err.get("input")), rule))
    return problems


def parse_config(raw: Mapping[str, Any] | None, env: Mapping[str, str] | None = None) -> Config:
    """Validate a configuration tree (already parsed YAML) plus environment overrides."""
    tree = dict(raw or {})
    if env is not None:
        tree = _environment_overrides(tree, env)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file at ``path`` (None: defaults only) and ``env`` (default: os.environ)."""
    env = os.environ if env is None else env
    raw: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([("--config", str(path), f"cannot be read: {exc.strerror}")]) from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([("--config", str(path), f"is not valid YAML: {exc}")]) from None
        if not isinstance(raw, dict):
            raise ConfigError([("<top level>", type(raw).__name__, "must be a mapping of sections")])
    return parse_config(raw, env)
