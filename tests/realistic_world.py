"""A realistic simulated VVTV around the PURE core (issue 9), beside ``sim_harness.SimWorld``.

``RealisticWorld`` reuses ``SimWorld``'s mechanics (simulated clock, timers from the core's own
``schedule`` effects, the simulated VVTV answering apply/golden, failure injection, crashes,
duplicates) and replaces what VVTV measures:

* traffic: ``units_per_minute`` (2,000) units a minute with a ``diurnal`` (±40 %) daily swing
  (peak at 20:00 UTC), Poisson per check interval; each unit goes to the canary with
  probability ``canary_traffic_percentage`` (20 %);
* ``error_rate``: one Bernoulli per unit (about 2 %; counts drawn exactly, binomial);
* ``selection_entropy``: one lognormal value per unit, σ = 0.8 (heavy tailed, CV ≈ 0.95),
  drawn value by value;
* any other configured KPI: lognormal σ 0.5 around 1.0, with no effect (so that any config runs);
* the truth (:class:`RealisticSurface`): entropy is a concave bowl over
  (``selection.diversity_weight``, ``selection.novelty_weight``) whose optimum drifts slowly;
  ``error_rate`` is flat until a knee on ``diversity + 0.5·novelty`` and rises sharply past it
  (a cliff: +25 % relative per 0.01), so the unconstrained optimum is unsafe and the safe
  optimum sits on the cliff's edge; the knee drifts too. Parameters the surface does not know
  have no effect.

Metric batches sent to the core are sufficient statistics (n, mean, M2) of genuinely per-unit
data. A canary's whole window is drawn when it starts (unit by unit), so the comparison judges
(:func:`kayenta_judge`: Mann-Whitney U at 98 %; :func:`welch_judge`: fixed-horizon Welch at the
configured confidence) see the same canaries the core's gate saw, even when the gate stopped
early. ``aa=True`` makes every canary an A/A test (the canary arm runs the control's truth).

Use from code::

    from realistic_world import RealisticWorld, realistic_config
    world = RealisticWorld(seed=1)                        # the seed's defaults, two parameters
    world = RealisticWorld(seed=1, config=realistic_config(kpis={...}))
    world = RealisticWorld(seed=1, config=load_world_config("my.yaml"))   # any YAML config
    world.run_days(30)
    world.summary()          # figures: gain captured, harmful deploys, inconclusive reasons, judges
    world.canaries           # one CanaryRecord per canary (truth, gate decision, judges)

Everything is deterministic given the seed.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import stats as _st

from sim_harness import HOUR, START_CARD, T0, Faults, SimWorld, _Ev, _merge
from vvtv_autopilot.handlers import bounds as B
from vvtv_autopilot.handlers.card import get_path
from vvtv_autopilot.schemas.config import Config, KpiSpec, load_config, parse_config
from vvtv_autopilot.schemas.events import MetricStats
from vvtv_autopilot.schemas.messages import rfc3339

D = "selection.diversity_weight"
N = "selection.novelty_weight"
START = {D: float(get_path(START_CARD, D)), N: float(get_path(START_CARD, N))}
ENTROPY, ERROR = "selection_entropy", "error_rate"

# The world's own notion of harm (independent of any config's margins, so configs compare):
HARM_ERROR = 0.05      # a deploy raising the true error_rate more than 5 % relative is harmful
HARM_ENTROPY = 0.01    # ... or lowering the true selection_entropy more than 1 % relative
SAFE_ERROR = 0.02      # the safe set: true error_rate within 2 % of the flat (pre-cliff) rate


def realistic_config(**overrides: Any) -> Config:
    """The seed's YAML as the README prints it (canary 60 min at 20 %, 95 %, a look every
    minute, the project's default KPI specs), two tunable parameters, golden set built in."""
    tree = {
        "autopilot": {"canary_duration_minutes": 60, "canary_traffic_percentage": 0.2,
                      "statistical_confidence_threshold": 0.95},
        "parameters": {D: {"min": 0.1, "max": 0.6}, N: {"min": 0.0, "max": 0.5}},
        "golden": {"mode": "builtin"},
    }
    return parse_config(_merge(tree, overrides))


def load_world_config(path: str | Path) -> Config:
    """A YAML config for the world (``--config FILE``), ignoring the environment. Keys it does
    not set keep the project's defaults (not :func:`realistic_config`'s)."""
    return load_config(path, env={})


# --- the truth -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RealisticSurface:
    """True per-unit means over (diversity, novelty) at a time."""

    entropy0: float = 2.4            # entropy at the (drifting) unconstrained optimum
    d_opt0: float = 0.46
    n_opt0: float = 0.32
    d_drift: float = 0.0012          # per day
    n_drift: float = -0.0008
    wobble: float = 0.01
    wobble_days: float = 11.0
    cd: float = 2.0                  # curvature in diversity
    cn: float = 1.2                  # ... in novelty
    cx: float = 0.5                  # interaction
    err0: float = 0.02
    knee0: float = 0.52              # on diversity + 0.5 novelty
    knee_drift: float = 0.0008
    cliff: float = 25.0              # relative error increase per unit past the knee
    err_floor_slope: float = 0.02    # a barely visible slope before the knee
    sigma: float = 0.8               # per-unit lognormal sigma of selection_entropy
    diurnal_level: float = 0.1       # error_rate's level swings ±10 % over the day (both arms)

    def days(self, t: datetime) -> float:
        return (t - T0).total_seconds() / 86400.0

    def optimum(self, t: datetime) -> tuple[float, float]:
        d = self.days(t)
        w = self.wobble * math.sin(2 * math.pi * d / self.wobble_days)
        return self.d_opt0 + self.d_drift * d + w, self.n_opt0 + self.n_drift * d - 0.5 * w

    def knee(self, t: datetime) -> float:
        d = self.days(t)
        return self.knee0 + self.knee_drift * d + 0.3 * self.wobble * math.sin(2 * math.pi * d / self.wobble_days)

    @staticmethod
    def coords(point: Mapping[str, float]) -> tuple[float, float]:
        return float(point.get(D, START[D])), float(point.get(N, START[N]))

    def entropy_xy(self, d, n, t: datetime):
        do, no = self.optimum(t)
        dd, dn = np.asarray(d) - do, np.asarray(n) - no
        return self.entropy0 * (1.0 - self.cd * dd * dd - self.cn * dn * dn - self.cx * dd * dn)

    def error_xy(self, d, n, t: datetime):
        s = np.asarray(d) + 0.5 * np.asarray(n)
        past = np.maximum(0.0, s - self.knee(t))
        return self.err0 * (1.0 + self.err_floor_slope * (s - 0.45) + self.cliff * past)

    def entropy(self, point: Mapping[str, float], t: datetime) -> float:
        return float(self.entropy_xy(*self.coords(point), t))

    def error(self, point: Mapping[str, float], t: datetime) -> float:
        return float(self.error_xy(*self.coords(point), t))

    def flat_error(self, t: datetime) -> float:
        """The error rate just before the cliff (the safe set's reference)."""
        return float(self.err0 * (1.0 + self.err_floor_slope * (self.knee(t) - 0.45)))

    def season(self, t: datetime) -> float:
        hours = (t - T0).total_seconds() / 3600.0
        return 1.0 + self.diurnal_level * math.cos(2 * math.pi * (hours - 20.0) / 24.0)

    def means(self, point: Mapping[str, float], t: datetime) -> dict[str, float]:
        return {ENTROPY: self.entropy(point, t), ERROR: min(0.5, self.error(point, t) * self.season(t))}

    def safe_optimum(self, t: datetime, ranges: Mapping[str, tuple[float, float]]) -> dict[str, float]:
        """The best entropy whose error rate is within SAFE_ERROR of the flat rate, on a grid
        over the configured hard ranges of the parameters this surface knows."""
        dl, dh = ranges.get(D, (START[D], START[D]))
        nl, nh = ranges.get(N, (START[N], START[N]))
        dg, ng = np.meshgrid(np.linspace(dl, dh, 201), np.linspace(nl, nh, 201))
        ent = self.entropy_xy(dg, ng, t)
        ok = self.error_xy(dg, ng, t) <= self.flat_error(t) * (1.0 + SAFE_ERROR)
        ent = np.where(ok, ent, -np.inf)
        i = np.unravel_index(int(np.argmax(ent)), ent.shape)
        return {D: float(dg[i]), N: float(ng[i])}


# --- the comparison judges -------------------------------------------------------------------------------


def _sign(spec: KpiSpec | Any) -> float:
    return 1.0 if getattr(spec, "direction", "increase") == "increase" else -1.0


def _mw_binary(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Two-sided asymptotic Mann-Whitney on 0/1 data (tie-corrected, continuity-corrected, as
    scipy's ``method='asymptotic'``) from counts; returns (p, U1 - n1 n2 / 2)."""
    n = n1 + n2
    ones, zeros = k1 + k2, n - k1 - k2
    r0, r1 = (zeros + 1) / 2.0, zeros + (ones + 1) / 2.0
    u1 = k1 * r1 + (n1 - k1) * r0 - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    ties = (ones ** 3 - ones) + (zeros ** 3 - zeros)
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 1.0, 0.0
    z = max(abs(u1 - mu) - 0.5, 0.0) / math.sqrt(var)
    return float(2.0 * _st.norm.sf(z)), u1 - mu


def kayenta_judge(kpis: Mapping[str, Any], raw: Mapping[str, dict], alpha: float = 0.02) -> tuple[str, list[str]]:
    """Kayenta-style: per KPI a two-sided Mann-Whitney U on the raw values at 98 %; the canary
    fails ("rollback") when any KPI is significantly worse by its direction, else passes
    ("deploy"). Returns (verdict, KPIs that failed)."""
    failed = []
    for name, spec in kpis.items():
        r = raw.get(name)
        if r is None:
            continue
        if r["kind"] == "bernoulli":
            if r["n_canary"] < 1 or r["n_control"] < 1:
                continue
            p, shift = _mw_binary(r["k_canary"], r["n_canary"], r["k_control"], r["n_control"])
        else:
            x, y = r["canary"], r["control"]
            if len(x) < 1 or len(y) < 1:
                continue
            res = _st.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic")
            p, shift = float(res.pvalue), float(res.statistic) - len(x) * len(y) / 2.0
        if p < alpha and _sign(spec) * shift < 0:
            failed.append(name)
    return ("rollback" if failed else "deploy"), failed


def welch_judge(kpis: Mapping[str, Any], arms: Mapping[str, dict], confidence: float,
                min_samples: int = 30) -> tuple[str, list[str]]:
    """The foundation's fixed-horizon judge, re-implemented here on scipy (so it does not move
    with the gate): per KPI a two-sided Welch test at the deadline at alpha = 1 - confidence;
    harm (significant, bad direction) in any KPI -> "rollback"; no data for a critical KPI ->
    "rollback"; else a significant improvement in any KPI -> "deploy"; else "inconclusive"."""
    alpha = 1.0 - confidence
    harm, better, missing = [], [], []
    for name, spec in kpis.items():
        a = arms.get(name)
        if a is None or a["control"][0] < max(min_samples, 2) or a["canary"][0] < max(min_samples, 2):
            missing.append(name)
            continue
        (n1, m1, v1), (n2, m2, v2) = a["control"], a["canary"]
        if v1 <= 0 and v2 <= 0:
            p = 0.0 if m1 != m2 else 1.0
        else:
            p = float(_st.ttest_ind_from_stats(m2, math.sqrt(max(v2, 0)), n2, m1, math.sqrt(max(v1, 0)), n1,
                                               equal_var=False).pvalue)
        good = _sign(spec) * (m2 - m1)
        if p < alpha and good < 0:
            harm.append(name)
        elif p < alpha and good > 0:
            better.append(name)
    if harm:
        return "rollback", harm
    if any(getattr(kpis[k], "critical", False) for k in missing):
        return "rollback", missing
    if missing:
        return "inconclusive", missing
    return ("deploy", better) if better else ("inconclusive", [])


# --- reading the gate's decision defensively -------------------------------------------------------------


def gate_reason(detail: Mapping[str, Any] | None, confidence: float = 0.95) -> tuple[str, str]:
    """(recommendation, why) from a ``Gated`` transition's detail, read defensively: the gate's
    decision is expected under ``detail["decision"]`` with ``reason``, ``kpis`` (per-KPI
    ``kpi``/``verdict``) and ``p_improvement``; when its shape changes, falls back to the reason
    text, then to ``"unparsed (keys ...)"``. ``why`` names the rule and the KPIs, e.g.
    ``"non-inferiority not shown: error_rate + improvement not significant"``."""
    detail = dict(detail or {})
    dec = detail.get("decision")
    dec = dec if isinstance(dec, Mapping) else (detail.get("gate") if isinstance(detail.get("gate"), Mapping) else {})
    rec = str(detail.get("recommendation") or dec.get("recommendation") or "unknown")
    reason = str(dec.get("reason") or detail.get("reason") or "")
    rule = str(detail.get("rule") or "")
    if "alert" in rule or "operator" in rule or "actor" in dec or "alert_id" in dec:   # not the statistics
        return rec, rule or "operator/alert"
    verdicts = dec.get("kpis")
    by_verdict: dict[str, list[str]] = {}
    if isinstance(verdicts, list):
        for v in verdicts:
            if isinstance(v, Mapping):
                by_verdict.setdefault(str(v.get("verdict", "?")), []).append(str(v.get("kpi", "?")))
    low = reason.lower()
    parts = []
    if "sample ratio" in low or "srm" in low.split():
        parts.append("sample ratio mismatch")
    if by_verdict.get("harm") or (not by_verdict and "harm" in low):
        parts.append("harm: " + ",".join(sorted(by_verdict.get("harm", []))) if by_verdict.get("harm") else "harm")
    if by_verdict.get("no_data") or "no data" in low:
        parts.append("no data: " + ",".join(sorted(by_verdict.get("no_data", []))))
    if not parts and low.startswith("shown worse"):
        parts.append("shown worse: improvement score below zero")
    if rec != "proceed" and not parts:
        if by_verdict.get("neutral") or "non-inferiority not shown" in low:
            parts.append("non-inferiority not shown: " + ",".join(sorted(by_verdict.get("neutral", []))))
        p_imp = dec.get("p_improvement")
        if (isinstance(p_imp, (int, float)) and p_imp > 1.0 - confidence) or "not significant" in low:
            parts.append("improvement not significant")
        elif "no weighted kpi" in low:
            parts.append("no weighted KPI to score")
    if not parts:
        if rec == "proceed":
            return rec, "proceed"
        if reason:
            return rec, "other: " + reason[:70]
        return rec, "unparsed (keys " + ",".join(sorted(map(str, detail))) + ")"
    return rec, " + ".join(p.rstrip(": ") for p in parts)


# --- the world -------------------------------------------------------------------------------------------


@dataclass
class CanaryRecord:
    """One canary: where it ran, the truth, what the core's gate and the comparison judges said."""

    cycle_id: str
    version: str
    started: datetime
    control: dict[str, float]
    candidate: dict[str, float]
    aa: bool
    true_lift: dict[str, float]                 # relative, canary vs control, at the start
    units: tuple[int, int] = (0, 0)             # (control, canary) over the planned window
    kayenta: str = ""
    kayenta_failed: list[str] = field(default_factory=list)
    welch: str = ""
    welch_kpis: list[str] = field(default_factory=list)
    gate: str | None = None                     # the core's recommendation (None: never gated)
    gate_why: str | None = None
    outcome: str | None = None                  # the cycle's terminal state

    @property
    def harmful(self) -> bool:
        """The world's truth: deploying this candidate would harm (independent of the config)."""
        return (self.true_lift.get(ERROR, 0.0) > HARM_ERROR) or (self.true_lift.get(ENTROPY, 0.0) < -HARM_ENTROPY)


def _lognormal_stats(values: np.ndarray) -> tuple[int, float, float]:
    n = len(values)
    if n == 0:
        return 0, 0.0, 0.0
    m = float(values.mean())
    return n, m, float(((values - m) ** 2).sum())


class RealisticWorld(SimWorld):
    def __init__(self, *, seed: int = 1, config: Config | None = None, surface: RealisticSurface | None = None,
                 faults: Faults | None = None, units_per_minute: float = 2000.0, diurnal: float = 0.4,
                 aa: bool = False, judges: bool = True, start_card: Mapping[str, Any] | None = None):
        config = config or realistic_config()
        super().__init__(seed=seed, config=config, faults=faults)
        if start_card is not None:      # the card on disk at the first boot (default: sim_harness.START_CARD)
            self.disk_card = copy.deepcopy(dict(start_card))
        self.surface = surface or RealisticSurface()       # type: ignore[assignment]
        self.units_per_minute = float(units_per_minute)
        self.diurnal = float(diurnal)
        self.aa = aa
        self.judges = judges
        self.names = sorted(self.config.parameters)
        self.ranges = {n: (s.min, s.max) for n, s in self.config.parameters.items()}
        self.vvtv_live = self._card_point(self.disk_card)  # type: ignore[assignment]
        self.start_point = dict(self.vvtv_live)
        self.canaries: list[CanaryRecord] = []
        self._plan: dict[str, list] = {}                    # version -> pre-drawn ticks of the window
        self.gated: dict[str, dict[str, Any]] = {}          # cycle id -> Gated detail

    # --- points ----------------------------------------------------------------------------------------

    def _norm(self, values: Mapping[str, Any]) -> dict[str, float]:
        return {n: float(values[n]) for n in self.names if isinstance(values.get(n), (int, float))}

    def _card_point(self, card):  # type: ignore[override]
        return self._norm({n: get_path(card, n, None) for n in sorted(self.config.parameters)})

    def _proposal_point(self, proposal, base):  # type: ignore[override]
        return {**dict(base or {}), **{k: float(v) for k, v in (proposal or {}).items()}}

    def _request_point(self, parameters):  # type: ignore[override]
        return self._norm(parameters)

    # --- traffic ----------------------------------------------------------------------------------------

    def rate(self, t: datetime) -> float:
        """Units a minute at ``t``: peak at 20:00 UTC, trough at 08:00."""
        hours = (t - T0).total_seconds() / 3600.0
        return self.units_per_minute * (1.0 + self.diurnal * math.cos(2 * math.pi * (hours - 20.0) / 24.0))

    def _draw(self, kpi: str, point: Mapping[str, float], t: datetime, n: int, keep: bool):
        """Per-unit data of one KPI for n units: (n, mean, M2, raw) with raw kept for the judges."""
        if kpi == ERROR:
            p = self.surface.means(point, t)[ERROR]
            k = int(self.rng.binomial(n, p)) if n else 0
            mean = k / n if n else 0.0
            return n, mean, k * (1.0 - mean) if n else 0.0, ("bernoulli", k)
        if kpi == ENTROPY:
            mu, sigma = self.surface.means(point, t)[ENTROPY], self.surface.sigma
        else:
            mu, sigma = 1.0, 0.5
        x = mu * np.exp(sigma * self.rng.standard_normal(n) - 0.5 * sigma * sigma)
        n_, m, m2 = _lognormal_stats(x)
        return n_, m, m2, ("values", x if keep else None)

    def _send(self, kpi: str, arm: str, version: str | None, n: int, mean: float, m2: float) -> None:
        if n < 1:
            return
        self._deliver(self.now, f"vvtv.metrics.{kpi}", MetricStats(kpi, arm, version, n, mean, m2, rfc3339(self.now)),
                      stream="VVTV_METRICS")

    def _on_live_tick(self, ev: _Ev) -> None:
        n = int(self.rng.poisson(self.rate(self.now) * 60.0))
        for kpi in self.config.kpis:
            n_, m, m2, _ = self._draw(kpi, self.vvtv_live, self.now, n, keep=False)
            self._send(kpi, "live", None, n_, m, m2)
        self._push(self.now + HOUR, "live_tick")

    def _canary_cycle(self, version: str) -> str:
        for a in reversed(self.apply_log):
            if a.get("version_id") == version and a.get("arm") == "canary":
                return str(a.get("cycle_id"))
        return "?"

    def _tick_data(self, t: datetime, control: dict, candidate: dict, keep: bool) -> dict[str, Any]:
        minutes = self.config.autopilot.check_interval_minutes
        units = int(self.rng.poisson(self.rate(t) * minutes))
        n_can = int(self.rng.binomial(units, self.config.autopilot.canary_traffic_percentage))
        out = {}
        for kpi in self.config.kpis:
            out[kpi] = (self._draw(kpi, control, t, units - n_can, keep),
                        self._draw(kpi, control if self.aa else candidate, t, n_can, keep))
        return out

    def _make_plan(self, version: str, first: datetime) -> None:
        """Draw the canary's whole window unit by unit now; judge it with the comparison judges."""
        cfg = self.config.autopilot
        control, candidate = dict(self.vvtv_live), dict(self.vvtv_canary[0])  # type: ignore[index]
        ticks = max(1, int(math.ceil(cfg.canary_duration_minutes / cfg.check_interval_minutes - 1e-9)))
        plan = [self._tick_data(first + timedelta(minutes=cfg.check_interval_minutes * i), control, candidate,
                                keep=self.judges) for i in range(ticks)]
        truth_c, truth_x = self.surface.means(control, first), self.surface.means(candidate if not self.aa else control, first)
        rec = CanaryRecord(self._canary_cycle(version), version, first, control, candidate, self.aa,
                           {k: truth_x[k] / truth_c[k] - 1.0 for k in truth_c if truth_c[k]})
        if self.judges:
            raw, arms = {}, {}
            for kpi in self.config.kpis:
                ctl = [tick[kpi][0] for tick in plan]
                can = [tick[kpi][1] for tick in plan]
                agg = []
                for side in (ctl, can):
                    n = sum(s[0] for s in side)
                    mean = sum(s[0] * s[1] for s in side) / n if n else 0.0
                    m2 = sum(s[2] + s[0] * (s[1] - mean) ** 2 for s in side)
                    agg.append((n, mean, m2 / (n - 1) if n > 1 else 0.0))
                arms[kpi] = {"control": agg[0], "canary": agg[1]}
                if ctl and ctl[0][3][0] == "bernoulli":
                    raw[kpi] = {"kind": "bernoulli", "n_control": agg[0][0], "n_canary": agg[1][0],
                                "k_control": sum(s[3][1] for s in ctl), "k_canary": sum(s[3][1] for s in can)}
                else:
                    raw[kpi] = {"kind": "values", "control": np.concatenate([s[3][1] for s in ctl]),
                                "canary": np.concatenate([s[3][1] for s in can])}
                rec.units = (agg[0][0], agg[1][0])
            rec.kayenta, rec.kayenta_failed = kayenta_judge(self.config.kpis, raw)
            rec.welch, rec.welch_kpis = welch_judge(self.config.kpis, arms, cfg.statistical_confidence_threshold,
                                                    cfg.min_samples_per_arm)
            for tick in plan:   # the raw values are not needed any more
                for kpi in tick:
                    tick[kpi] = tuple(s[:3] for s in tick[kpi])
        self.canaries.append(rec)
        self._plan[version] = plan

    def _on_canary_tick(self, ev: _Ev) -> None:
        version, _since = ev.data
        if self.vvtv_canary is None or self.vvtv_canary[1] != version:
            self._plan.pop(version, None)
            return   # the canary arm was put back
        if version not in self._plan:
            self._make_plan(version, self.now)
        plan = self._plan[version]
        data = plan.pop(0) if plan else self._tick_data(self.now, dict(self.vvtv_live), dict(self.vvtv_canary[0]), False)
        for kpi, (ctl, can) in data.items():
            self._send(kpi, "control", None, *ctl[:3])
            self._send(kpi, "canary", version, *can[:3])
        self._push(self.now + timedelta(minutes=self.config.autopilot.check_interval_minutes), "canary_tick", ev.data)

    # --- the core's decisions -----------------------------------------------------------------------------

    def _feed(self, ib):  # type: ignore[override]
        step = super()._feed(ib)
        for t in step.transitions:
            if t.to == "Gated":
                self.gated[t.cycle_id] = dict(t.detail)
            if t.to in ("Deployed", "RolledBack", "Failed", "Aborted", "NoChange"):
                for rec in self.canaries:
                    if rec.cycle_id == t.cycle_id:
                        rec.outcome = t.to
                        if t.cycle_id in self.gated:
                            rec.gate, rec.gate_why = gate_reason(self.gated[t.cycle_id],
                                                                 self.config.autopilot.statistical_confidence_threshold)
        return step

    def true_error_lift(self, c) -> float | None:  # type: ignore[override]
        if c.candidate_w is None or c.canary_started is None:
            return None
        base = self.surface.error(c.base_w, c.canary_started)
        return (self.surface.error(c.candidate_w, c.canary_started) - base) / base

    # --- the day's record ------------------------------------------------------------------------------

    def _on_day_end(self, ev: _Ev) -> None:
        t = self.now
        live = self._card_point(self.ap.state.card)
        opt = self.surface.safe_optimum(t, self.ranges)
        e_live, e0, e_opt = self.surface.entropy(live, t), self.surface.entropy(self.start_point, t), self.surface.entropy(opt, t)
        self.daily_live.append({
            "day": ev.data, "point": live, "vvtv_point": dict(self.vvtv_live), "canary_open": self.vvtv_canary is not None,
            "entropy": e_live, "entropy_start": e0, "entropy_opt": e_opt, "opt": opt,
            "error": self.surface.error(live, t), "flat_error": self.surface.flat_error(t),
            "unsafe": self.surface.error(live, t) > self.surface.flat_error(t) * (1.0 + SAFE_ERROR),
            "captured": (e_live - e0) / (e_opt - e0) if e_opt - e0 > 1e-12 else float("nan"),
            "paused": self.ap.paused(t),
            "bounds_problems": [p for b in self.ap.tuning.bounds.values() for p in B.check_invariants(b, t)],
        })

    # --- summaries ---------------------------------------------------------------------------------------

    def cycle_days(self) -> list[int]:
        return sorted(c.day for c in self.cycles.values())

    def summary(self) -> dict[str, Any]:
        """The figures the bench aggregates (one seed)."""
        caps = [d["captured"] for d in self.daily_live if math.isfinite(d["captured"])]
        deployed = [r for r in self.canaries if r.outcome == "Deployed"]
        gated = [r for r in self.canaries if r.gate is not None]
        return {
            "days": len(self.daily_live),
            "cycles": len(self.cycles),
            "outcomes": dict(Counter(c.outcome or "running" for c in self.cycles.values())),
            "canaries": len(self.canaries),
            "captured_mean": float(np.mean(caps)) if caps else float("nan"),
            "captured_final": caps[-1] if caps else float("nan"),
            "unsafe_days": sum(1 for d in self.daily_live if d["unsafe"]),
            "deploys": len(deployed),
            "harmful_deploys": sum(1 for r in deployed if r.harmful),
            "gate": dict(Counter(r.gate for r in gated)),
            "inconclusive_why": dict(Counter(r.gate_why for r in gated if r.gate == "inconclusive")),
            "rollback_why": dict(Counter(r.gate_why for r in gated if r.gate == "rollback")),
            "kayenta_deploys": sum(1 for r in self.canaries if r.kayenta == "deploy"),
            "kayenta_harmful": sum(1 for r in self.canaries if r.kayenta == "deploy" and r.harmful),
            "welch_deploys": sum(1 for r in self.canaries if r.welch == "deploy"),
            "welch_harmful": sum(1 for r in self.canaries if r.welch == "deploy" and r.harmful),
            "welch_rollbacks": sum(1 for r in self.canaries if r.welch == "rollback"),
            "kayenta_rollbacks": sum(1 for r in self.canaries if r.kayenta == "rollback"),
            "pauses": len(self.pauses),
        }
