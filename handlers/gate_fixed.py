"""The fixed-horizon judge (the foundation's gate), kept as a baseline for the
benchmark: one two-sided Welch test per KPI at the deadline, no early look."""

from __future__ import annotations

from typing import Mapping

from ..schemas.config import KpiSpec
from .gate import GateDecision, KpiVerdict
from .stats import RunningStats, welch


def evaluate_gate_fixed(
    kpis: Mapping[str, KpiSpec],
    control: Mapping[str, RunningStats],
    canary: Mapping[str, RunningStats],
    *,
    confidence: float,
    min_samples: int,
    final: bool,
) -> GateDecision:
    """Before the deadline only ``continue``; at it, harm (p < alpha, two-sided,
    bad direction) in any KPI rolls back, otherwise a significant improvement
    proceeds, otherwise inconclusive. No multiplicity correction."""
    alpha = 1.0 - confidence
    method = "welch-fixed-horizon"
    if not final:
        return GateDecision("continue", "fixed-horizon gate waits for the deadline", [], 1.0, confidence,
                            method=method, action="continue")
    verdicts: list[KpiVerdict] = []
    for name, spec in kpis.items():
        a, b = control.get(name) or RunningStats(), canary.get(name) or RunningStats()
        if a.n < max(min_samples, 2) or b.n < max(min_samples, 2):
            verdicts.append(KpiVerdict(name, spec.direction, spec.critical, a.n, b.n, None, None, None, None,
                                       None, "no_data", f"fewer than {min_samples} samples in an arm"))
            continue
        w = welch(a, b)
        good = (1.0 if spec.direction == "increase" else -1.0) * w.diff
        if w.p_value < alpha and good < 0:
            verdict = "harm"
        elif w.p_value < alpha and good > 0:
            verdict = "improvement"
        else:
            verdict = "neutral"
        verdicts.append(KpiVerdict(name, spec.direction, spec.critical, a.n, b.n, a.mean, b.mean, w.lift, w.diff,
                                   w.p_value, verdict, f"two-sided Welch p={w.p_value:.3g}"))
    p_min = min((v.p_value for v in verdicts if v.p_value is not None), default=1.0)
    if any(v.verdict == "harm" for v in verdicts):
        return GateDecision("rollback", "harm", verdicts, p_min, confidence, method=method, action="rollback", final=True)
    if any(v.verdict == "no_data" and v.critical for v in verdicts):
        return GateDecision("rollback", "no data for a critical KPI", verdicts, 1.0, confidence, method=method,
                            action="rollback", final=True)
    if any(v.verdict == "no_data" for v in verdicts):
        return GateDecision("inconclusive", "no data", verdicts, 1.0, confidence, method=method,
                            action="rollback", final=True)
    if any(v.verdict == "improvement" for v in verdicts):
        return GateDecision("proceed", "improvement, no harm", verdicts, p_min, confidence, method=method,
                            action="proceed", final=True)
    return GateDecision("inconclusive", "no significant difference", verdicts, p_min, confidence, method=method,
                        action="rollback", final=True)
