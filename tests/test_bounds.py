"""Sliding bounds: invariants over random sequences of days, rollbacks, overrides and pauses,
and the exact expansion / contraction amounts from the configuration."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vvtv_autopilot.handlers import bounds as B
from vvtv_autopilot.schemas.config import ParameterSpec, SlidingBoundsConfig

T0 = datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc)
SPEC = ParameterSpec(min=0.1, max=0.6)
CFG = SlidingBoundsConfig()


def fresh(value: float = 0.3, spec: ParameterSpec = SPEC, frac: float = 0.1) -> B.ParameterBounds:
    b, adjs = B.initial_bounds("selection.diversity_weight", spec, value, at=T0, half_width_fraction=frac)
    assert [a.kind for a in adjs] == ["init"]
    return b


def width(r: tuple[float, float]) -> float:
    return r[1] - r[0]


# --- unit behaviour ---------------------------------------------------------------------


def test_initial_band_is_centred_and_shifted_inside_hard_limits():
    b = fresh(0.3)
    assert b.range == pytest.approx((0.25, 0.35))
    edge = fresh(0.12)
    assert edge.range == pytest.approx((0.1, 0.2))  # shifted, width kept
    assert B.check_invariants(edge) == []
    with pytest.raises(B.BoundsError, match="outside the configured hard limits"):
        B.initial_bounds("p", SPEC, 0.9, at=T0)


def test_validate_change_names_the_bound():
    b = fresh(0.3)
    assert B.validate_change(b, 0.3)[0]
    ok, reason = B.validate_change(b, 0.4)
    assert not ok and "above the sliding maximum 0.35" in reason and "hard [0.1, 0.6]" in reason
    ok, reason = B.validate_change(b, 0.05)
    assert not ok and "below the hard minimum 0.1" in reason
    assert not B.validate_change(b, math.nan)[0]


def test_clamp_or_reject():
    b = fresh(0.3)
    r = B.clamp_or_reject(b, 0.5, "clamp")
    assert r.action == "clamped" and r.value == pytest.approx(0.35) and "clamped to 0.35" in r.reason
    r = B.clamp_or_reject(b, 0.5, "reject")
    assert r.action == "rejected" and r.value is None and "0.35" in r.reason
    r = B.clamp_or_reject(b, 0.31, "reject")
    assert r.action == "accepted" and r.value == 0.31
    assert B.clamp_or_reject(b, math.inf, "clamp").action == "rejected"


def test_expansion_after_threshold_days_exact_amount():
    b = fresh(0.3)
    adjs_all = []
    for day in range(1, CFG.stability_threshold_days + 1):
        b, adjs = B.record_stable_day(b, CFG, at=T0 + timedelta(days=day))
        adjs_all += adjs
    assert [a.kind for a in adjs_all] == ["expansion"]
    # 5 % of the hard span (0.5) per 7 days = 0.025, half on each side
    assert b.range == pytest.approx((0.2375, 0.3625))
    assert b.stability_days == 0
    assert adjs_all[0].rule.startswith("expansion_rate_per_week=0.05")


def test_expansion_at_a_hard_limit_goes_to_the_other_side():
    b = fresh(0.12)   # [0.1, 0.2]
    for day in range(1, 8):
        b, _ = B.record_stable_day(b, CFG, at=T0 + timedelta(days=day))
    assert b.range == pytest.approx((0.1, 0.225))


def test_anti_windup_holds_on_bound_pinned_paused():
    b = fresh(0.3)
    b, _ = B.mark_deployed(b, 0.35, at=T0)  # on the sliding maximum
    b, adjs = B.record_stable_day(b, CFG, at=T0 + timedelta(days=1))
    assert [a.kind for a in adjs] == ["anti_windup"] and "maximum" in adjs[0].reason
    assert b.stability_days == 0 and b.hold
    b, adjs = B.record_stable_day(b, CFG, at=T0 + timedelta(days=2))
    assert adjs == []  # same hold: no new record
    b, _ = B.mark_deployed(b, 0.3, at=T0 + timedelta(days=2))
    b, _ = B.record_stable_day(b, CFG, at=T0 + timedelta(days=3))
    assert b.stability_days == 1 and b.hold is None
    b, adjs = B.record_stable_day(b, CFG, at=T0 + timedelta(days=4), paused=True)
    assert b.stability_days == 1 and "paused" in adjs[0].reason
    b, adjs = B.record_stable_day(b, CFG, at=T0 + timedelta(days=5), pinned=True)
    assert b.stability_days == 1 and "pinned" in adjs[0].reason
    off = SlidingBoundsConfig(anti_windup_enabled=False)
    b, adjs = B.record_stable_day(b, off, at=T0 + timedelta(days=6), paused=True)
    assert b.stability_days == 2 and adjs == []


def test_contraction_freeze_recentre_and_thaw():
    b = fresh(0.3)
    b, _ = B.mark_deployed(b, 0.33, at=T0)
    b, adjs = B.contract_after_rollback(b, CFG, at=T0 + timedelta(days=1))
    assert [a.kind for a in adjs] == ["contraction"]
    # around 0.33: lo = 0.33 - 0.75*0.08, hi = 0.33 + 0.75*0.02
    assert b.range == pytest.approx((0.27, 0.345))
    b, _ = B.contract_after_rollback(b, CFG, at=T0 + timedelta(days=2))
    b, adjs = B.contract_after_rollback(b, CFG, at=T0 + timedelta(days=3))
    assert [a.kind for a in adjs] == ["contraction", "recentre"]
    assert b.frozen_expansion and b.rollback_count == 3 and b.total_rollbacks == 3
    assert (b.min_value + b.max_value) / 2 == pytest.approx(0.33)
    assert width(b.range) == pytest.approx(0.1 * 0.75 ** 3)
    before = b.range
    thaw_after = CFG.stability_threshold_days * CFG.rollback_threshold
    kinds = []
    for day in range(1, thaw_after + 1):
        b, adjs = B.record_stable_day(b, CFG, at=T0 + timedelta(days=3 + day))
        kinds += [a.kind for a in adjs]
    assert kinds == ["thaw"] and b.range == before  # no expansion while frozen
    assert not b.frozen_expansion and b.rollback_count == 0


def test_rollback_to_a_restored_value_outside_the_range():
    b = fresh(0.3)
    b, adjs = B.contract_after_rollback(b, CFG, at=T0, restored_value=0.45)
    assert [a.kind for a in adjs] == ["contain", "contraction"]
    assert b.current_value == b.last_known_good == 0.45
    assert B.check_invariants(b) == []
    with pytest.raises(B.BoundsError, match="hard limits"):
        B.contract_after_rollback(b, CFG, at=T0, restored_value=0.7)


def test_bounds_override_rules_and_expiry():
    b = fresh(0.3)
    with pytest.raises(B.BoundsError, match="within the hard limits"):
        B.bounds_override(b, min_value=0.0, max_value=0.5, until=T0 + timedelta(hours=2), at=T0, actor="op")
    with pytest.raises(B.BoundsError, match="contain the current value"):
        B.bounds_override(b, min_value=0.4, max_value=0.5, until=T0 + timedelta(hours=2), at=T0, actor="op")
    b, adjs = B.bounds_override(b, min_value=0.2, max_value=0.55, until=T0 + timedelta(hours=2), at=T0, actor="op")
    assert adjs[0].kind == "override"
    assert B.effective_range(b, T0 + timedelta(hours=1)) == (0.2, 0.55)
    assert B.validate_change(b, 0.5, at=T0 + timedelta(hours=1))[0]
    b, _ = B.mark_deployed(b, 0.5, at=T0 + timedelta(hours=1))
    assert B.check_invariants(b, T0 + timedelta(hours=1)) == []
    b, adjs = B.refresh(b, at=T0 + timedelta(hours=2))
    assert [a.kind for a in adjs] == ["override_expired"]
    assert b.override is None and b.range == pytest.approx((0.25, 0.5))
    assert B.check_invariants(b, T0 + timedelta(hours=2)) == []


def test_json_round_trip():
    b = fresh(0.3)
    b, _ = B.contract_after_rollback(b, CFG, at=T0)
    b, _ = B.bounds_override(b, min_value=0.2, max_value=0.4, until=T0 + timedelta(hours=5), at=T0, actor="op")
    again = msgspec.json.decode(msgspec.json.encode(b), type=B.ParameterBounds)
    assert again == b


def test_reconcile_spec_clips_into_new_hard_limits():
    b = fresh(0.3)
    b, adjs = B.reconcile_spec(b, ParameterSpec(min=0.28, max=0.6), at=T0)
    assert b.range == pytest.approx((0.28, 0.35)) and adjs[0].kind == "spec_change"
    assert B.check_invariants(b) == []


# --- property tests -----------------------------------------------------------------------

configs = st.builds(
    SlidingBoundsConfig,
    expansion_rate_per_week=st.floats(0, 0.5),
    contraction_rate_after_rollback=st.floats(0, 0.9),
    stability_threshold_days=st.integers(1, 10),
    rollback_threshold=st.integers(1, 5),
    anti_windup_enabled=st.booleans(),
)

ops = st.one_of(
    st.tuples(st.just("stable"), st.booleans(), st.booleans()),
    st.tuples(st.just("stable"), st.just(False), st.just(False)),
    st.tuples(st.just("rollback"), st.one_of(st.none(), st.floats(0, 1))),
    st.tuples(st.just("deploy"), st.floats(0, 1)),
    st.tuples(st.just("override"), st.floats(0, 1), st.floats(0, 1), st.floats(1, 100)),
    st.tuples(st.just("clear_override"),),
    st.tuples(st.just("pin"), st.floats(0, 1)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, start=st.floats(0, 1), frac=st.floats(0, 0.5), hard=st.tuples(st.floats(-100, 100), st.floats(1e-3, 100)),
       sequence=st.lists(ops, min_size=1, max_size=60))
def test_invariants_and_exact_amounts_over_random_sequences(cfg, start, frac, hard, sequence):
    spec = ParameterSpec(min=hard[0], max=hard[0] + hard[1])
    span = spec.max - spec.min
    tol = 1e-9 * span + 1e-12
    b, _ = B.initial_bounds("p", spec, spec.min + start * span, at=T0, half_width_fraction=frac)
    assert B.check_invariants(b, T0) == []
    at = T0
    for op in sequence:
        at = at + timedelta(hours=12)
        before = b
        kind = op[0]
        if kind == "stable":
            _, paused, pinned = op
            b_ref, _ = B.refresh(before, at=at)
            held = B.hold_reason(b_ref, cfg, at, paused, pinned) is not None
            b, adjs = B.record_stable_day(before, cfg, at=at, paused=paused, pinned=pinned)
            kinds = [a.kind for a in adjs if a.kind not in ("override_expired",)]
            if held:
                assert b.stability_days == before.stability_days
                assert b.range == b_ref.range
                assert kinds in ([], ["anti_windup"])
            elif "expansion" in kinds:
                exp = next(a for a in adjs if a.kind == "expansion")
                assert not before.frozen_expansion
                assert before.stability_days + 1 >= cfg.stability_threshold_days
                want = min(span, width(exp.old_range) + B.expansion_amount(before, cfg))
                assert width(exp.new_range) == pytest.approx(want, abs=tol * 10)
                assert exp.new_range[0] <= exp.old_range[0] + tol and exp.new_range[1] >= exp.old_range[1] - tol
                assert b.stability_days == 0
            elif "thaw" in kinds:
                assert before.frozen_expansion and not b.frozen_expansion
            else:
                assert kinds == []
                if before.frozen_expansion or before.stability_days + 1 < cfg.stability_threshold_days:
                    assert b.stability_days == before.stability_days + 1
        elif kind == "rollback":
            restored = None if op[1] is None else spec.min + op[1] * span
            b, adjs = B.contract_after_rollback(before, cfg, at=at, restored_value=restored)
            con = next(a for a in adjs if a.kind == "contraction")
            assert width(con.new_range) == pytest.approx((1 - cfg.contraction_rate_after_rollback) * width(con.old_range),
                                                         abs=tol * 10)
            assert b.rollback_count == before.rollback_count + 1 and b.stability_days == 0
            assert b.current_value == b.last_known_good
            recentred = [a for a in adjs if a.kind == "recentre"]
            assert bool(recentred) == (b.rollback_count >= cfg.rollback_threshold)
            if recentred:
                r = recentred[0]
                assert width(r.new_range) == pytest.approx(width(r.old_range), abs=tol * 10)
                assert b.frozen_expansion
        elif kind == "deploy":
            lo, hi = B.effective_range(B.refresh(before, at=at)[0], at)
            value = lo + op[1] * (hi - lo)
            b, adjs = B.mark_deployed(before, value, at=at)
            assert [a.kind for a in adjs if a.kind != "override_expired"] == []
            assert b.current_value == value
        elif kind == "pin":  # an operator's value anywhere within the hard limits
            b, _ = B.mark_deployed(before, spec.min + op[1] * span, at=at, known_good=False)
        elif kind == "override":
            lo = spec.min + min(op[1], op[2]) * span
            hi = spec.min + max(op[1], op[2]) * span
            try:
                b, adjs = B.bounds_override(before, min_value=lo, max_value=hi, until=at + timedelta(hours=op[3]),
                                            at=at, actor="op")
                assert adjs[-1].kind == "override"
            except B.BoundsError:
                assert lo >= hi or not (lo <= before.current_value <= hi)
                b = before
        elif kind == "clear_override":
            b, _ = B.clear_bounds_override(before, at=at, actor="op")
        assert B.check_invariants(b, at) == [], (op, before, b)
        assert len(b.history) <= B.HISTORY_LIMIT
    assert msgspec.json.decode(msgspec.json.encode(b), type=B.ParameterBounds) == b
