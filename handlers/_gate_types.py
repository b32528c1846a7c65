"""The gate's result types (re-exported by :mod:`.gate`)."""

from __future__ import annotations

from typing import Literal

import msgspec

Recommendation = Literal["proceed", "rollback", "inconclusive", "continue"]
Action = Literal["proceed", "rollback", "extend", "continue"]
METHOD = "hybrid-msprt+welch"            # the default: alpha split between the mixture and one deadline look
METHOD_SEQUENTIAL = "msprt-normal-mixture"   # sequential_alpha_share=1: the mixture alone


class KpiVerdict(msgspec.Struct, frozen=True):
    kpi: str
    direction: str
    critical: bool
    n_control: int
    n_canary: int
    control_mean: float | None
    canary_mean: float | None
    lift: float | None          # relative, canary vs control (None: baseline ~ 0)
    diff: float | None          # absolute difference canary - control
    p_value: float | None       # hybrid p of the test that decided (harm or non-inferiority), on the alpha scale
    verdict: Literal["harm", "improvement", "non_inferior", "neutral", "no_data"]
    rule: str
    mode: Literal["relative", "absolute", "none"] = "none"   # units of estimate/interval/margin
    estimate: float | None = None     # lift (relative: canary/control - 1) or diff (absolute), canary vs control
    interval: tuple[float, float] | None = None   # valid bounds on ``estimate``, each at confidence
    se: float | None = None           # of the tested effect: the log ratio (relative) or the diff (absolute)
    df: float | None = None
    margin: float | None = None       # non-inferiority margin: relative (on the ratio) or in the KPI's units
    p_harm: float | None = None       # hybrid p, H0: not worse than the margin (compare with alpha)
    p_noninferior: float | None = None  # hybrid p, H0: worse than the margin (compare with alpha)
    srm_p: float | None = None        # anytime-valid SRM p of this KPI's arm counts (decides)
    srm_chi2_p: float | None = None   # classic one-look chi-square p, for the record
    p_harm_sequential: float | None = None       # raw anytime-valid mixture p (compare with alpha_sequential)
    p_harm_fixed: float | None = None            # raw one-sided Welch p at the deadline look (alpha_fixed)
    p_noninferior_sequential: float | None = None
    p_noninferior_fixed: float | None = None
    log_ratio: float | None = None    # relative mode: log(canary mean / control mean), the tested effect


class GateDecision(msgspec.Struct, frozen=True):
    recommendation: Recommendation
    reason: str
    kpis: list[KpiVerdict]
    statistical_significance: float   # p-value of the deciding test; for continue/inconclusive the evidence to proceed so far
    confidence_level: float
    improvement_pct: float | None = None
    degradation_pct: float | None = None
    method: str = METHOD
    action: Action = "continue"       # what the machine should do next
    extend: bool = False              # action == "extend"
    final: bool = False
    elapsed_fraction: float = 1.0
    score: float | None = None        # weighted relative improvement (positive = good)
    score_lower: float | None = None  # its lower bound at confidence
    p_improvement: float | None = None   # hybrid p of the score (compare with alpha)
    srm_p: float | None = None        # smallest anytime-valid SRM p-value over KPIs with data
    mixture_r: float | None = None    # mixture variance / end-of-window variance, at this look
    alpha_sequential: float | None = None   # alpha spent by the mixture tests over all looks
    alpha_fixed: float | None = None        # alpha of this look's fixed-horizon test (deadline or extension's deadline)
    fixed_look: bool = False                # this look ran the fixed-horizon tests
    p_improvement_sequential: float | None = None
    p_improvement_fixed: float | None = None
    p_worse: float | None = None      # hybrid p of "the score is below zero" (compare with alpha; rule 2b)
