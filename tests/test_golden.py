"""Built-in golden-set evaluator: the shipped cases and a fixture exercising every kind."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from vvtv_autopilot.handlers.golden import builtin_golden_set, evaluate_golden, parse_golden_set, select
from vvtv_autopilot.schemas.messages import GoldenReply, encode

FIXTURE = parse_golden_set((Path(__file__).parent / "data" / "golden_cases.json").read_bytes())
GOOD = {"w": 0.3, "limits": {"floor": 1, "cap": 2}, "mix.a": 0.25, "mix.b": 0.75}


def failed(reply: GoldenReply) -> dict[str, str]:
    return {f.case: f.reason for f in reply.failures}


def test_fixture_passes_as_written():
    reply = evaluate_golden(FIXTURE, GOOD)
    assert reply.passed and reply.cases_run == 5 and reply.failures == []  # the optional case is skipped


@pytest.mark.parametrize("change, case, words", [
    ({"w": 1.5}, "w_in_unit_interval", "above 1"),
    ({"limits": {"floor": 2, "cap": 2}}, "floor_below_cap", "must be below"),
    ({"mix.b": 0.7}, "mix_sums_to_one", "expected 1"),
    ({"w": 0.5}, "novelty_pick", "expected 'a' first"),        # 0.5 + 0.5*1.0 > 0.9: c wins
    ({"w": 0.0}, "two_genres", "1 distinct genre"),
])
def test_fixture_fails_as_written(change, case, words):
    reply = evaluate_golden(FIXTURE, {**GOOD, **change})
    assert not reply.passed
    assert case in failed(reply) and words in failed(reply)[case]


def test_missing_parameter_fails_unless_optional():
    params = dict(GOOD)
    del params["mix.a"]
    reply = evaluate_golden(FIXTURE, params)
    assert failed(reply) == {"mix_sums_to_one": "parameter mix.a is missing"}


def test_blocked_items_are_never_picked():
    assert "z" not in select(FIXTURE.catalogue, GOOD, {"score": {"quality": 1}, "slots": 10})


def test_builtin_cases_pass_inside_the_design_range_and_fail_outside():
    golden = builtin_golden_set()
    for w in (0.1, 0.25, 0.45, 0.6):
        assert evaluate_golden(golden, {"selection.diversity_weight": w}).passed, w
        assert evaluate_golden(golden, {"selection": {"diversity_weight": w}}).passed, w  # a nested card
    bad = evaluate_golden(golden, {"selection.diversity_weight": 0.8})
    assert set(failed(bad)) == {"diversity_weight_within_design_range", "diverse_quality_schedule"}
    assert "l1" in failed(bad)["diverse_quality_schedule"]
    assert not evaluate_golden(golden, {"selection.diversity_weight": 0.05}).passed
    # the reply is the contract's §3.2 shape
    assert msgspec.json.decode(encode(bad)) == {
        "passed": False, "cases_run": 3,
        "failures": [{"case": f.case, "reason": f.reason} for f in bad.failures]}


def test_invalid_golden_sets_are_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        parse_golden_set({"cases": [{"name": "x", "kind": "nope"}]})
    with pytest.raises(ValueError, match="twice"):
        parse_golden_set({"cases": [{"name": "x", "kind": "range"}, {"name": "x", "kind": "range"}]})
