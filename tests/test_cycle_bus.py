"""End to end on a real nats-server and real SQLite: whole cycles."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from conftest import ctl, wait_for
from vvtv_autopilot.handlers.card import version_id
from vvtv_autopilot.schemas.messages import rfc3339

DESIGN_PATH = ["Analyzing", "Bounded", "Validated", "Canary", "Gated"]


async def _finished(service, events, cycle_id):
    await wait_for(lambda: events.cycle_end(cycle_id), what=f"evt.cycle of {cycle_id}")
    return await service.store.transitions(cycle_id)


def _assert_log(records, cycle_id, end):
    assert [r.seq for r in records] == list(range(1, len(records) + 1)), "seq must start at 1 without gaps"
    assert [r.to for r in records] == DESIGN_PATH + [end]
    assert records[0].from_ == "Pending"
    for r in records:
        assert r.cycle_id == cycle_id and r.machine and r.cause["key"] and r.at


async def test_harmful_canary_rolls_back_through_every_state_and_keeps_the_card(service_factory, vvtv, client, events):
    service = await service_factory()
    card_before = service.card.history.card_path.read_bytes()
    await vvtv(service)
    reply = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.6}})
    assert reply["ok"], reply
    records = await _finished(service, events, reply["cycle_id"])
    _assert_log(records, reply["cycle_id"], "RolledBack")
    gated = records[-2]
    assert gated.detail["recommendation"] == "rollback"
    assert service.card.history.card_path.read_bytes() == card_before
    # the same records were published, in order
    await wait_for(lambda: len([t for t in events.of("evt.transition") if t["cycle_id"] == reply["cycle_id"]]) == len(records))
    published = [t for t in events.of("evt.transition") if t["cycle_id"] == reply["cycle_id"]]
    assert [t["seq"] for t in published] == [r.seq for r in records]
    assert published[-1]["from"] == "Gated" and published[-1]["to"] == "RolledBack"
    # evt.alert may follow evt.cycle in a later relay batch: wait for it, never assume it came first
    await wait_for(lambda: any(a["kind"] == "cycle_rolledback" for a in events.of("evt.alert")),
                   what="evt.alert cycle_rolledback")


async def test_better_canary_is_deployed_and_the_card_holds_the_new_value(service_factory, vvtv, client, events):
    service = await service_factory()
    sim = await vvtv(service)
    reply = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.45}})
    records = await _finished(service, events, reply["cycle_id"])
    _assert_log(records, reply["cycle_id"], "Deployed")
    card = json.loads(service.card.history.card_path.read_text())
    assert card["selection"]["diversity_weight"] == 0.45
    assert service.card.history.current_version_id() == version_id(card)
    assert sim.live == {"selection.diversity_weight": 0.45}
    live = [r for r in sim.apply_log if r["arm"] == "live"]
    assert live and live[-1]["version_id"] == version_id(card)
    rows = await service.store.cycles()
    assert rows[0]["status"] == "completed" and rows[0]["outcome"] == "Deployed"


async def test_critical_alert_mid_canary_rolls_back_at_once(service_factory, vvtv, client, events):
    service = await service_factory(canary_duration_minutes=5)
    await vvtv(service)
    reply = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.45}})
    await wait_for(lambda: service.core.running() and service.core.running().state == "Canary", what="Canary")
    js = client.jetstream()
    await js.publish("vvtv.alerts.critical", json.dumps({
        "alert_id": "a-1", "severity": "critical", "source": "alert-engine", "message": "error budget burning",
        "fired_at": rfc3339(datetime.now(timezone.utc))}).encode())
    records = await _finished(service, events, reply["cycle_id"])
    _assert_log(records, reply["cycle_id"], "RolledBack")
    assert records[-2].detail["rule"] == "critical alert"
    assert records[-2].cause["subject"] == "vvtv.alerts.critical"


async def test_without_a_proposal_the_optimizer_proposes_and_the_cycle_reaches_canary(service_factory, vvtv, client, events):
    service = await service_factory()
    await vvtv(service)
    reply = await ctl(client, "run-now", {"actor": "test"})
    assert reply["ok"], reply
    records = await _finished(service, events, reply["cycle_id"])
    assert [r.to for r in records][:4] == ["Analyzing", "Bounded", "Validated", "Canary"]
    bounded = records[1].detail
    assert bounded["proposal"]["source"] == "optimizer" and bounded["proposal"]["method"] == "exploration"
    (check,) = bounded["checks"]
    low, high = check["range"]
    assert check["action"] in ("accepted", "clamped") and low <= check["value"] <= high
    snapshot = service.core.cycle.data
    assert snapshot.prediction is not None and snapshot.changes[0]["change_type"] in ("exploration", "optimization")


async def test_a_pinned_parameter_is_never_proposed(service_factory, client, events):
    service = await service_factory()
    assert (await ctl(client, "override", {"actor": "ops", "parameter": "selection.diversity_weight", "value": 0.35}))["ok"]
    reply = await ctl(client, "run-now", {"actor": "test"})
    records = await _finished(service, events, reply["cycle_id"])
    assert [r.to for r in records] == ["Analyzing", "NoChange"]
    assert "pinned" in records[-1].detail["reason"]


async def test_an_operator_value_outside_the_sliding_range_is_refused_with_the_bound(service_factory, client):
    service = await service_factory(sliding_bounds={"initial_half_width_fraction": 0.1})
    reply = await ctl(client, "propose", {"actor": "ops", "changes": {"selection.diversity_weight": 0.55}})
    assert reply["ok"] is False and "sliding maximum" in reply["error"], reply
    assert service.core.running() is None


async def test_golden_failure_ends_without_deploying(service_factory, vvtv, client, events):
    service = await service_factory()
    sim = await vvtv(service, golden=lambda req: {"passed": False, "cases_run": 2,
                                                  "failures": [{"case": "diversity-floor", "reason": "too low"}]})
    reply = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.2}})
    records = await _finished(service, events, reply["cycle_id"])
    assert [r.to for r in records] == ["Analyzing", "Bounded", "Failed"]
    assert records[-1].detail["failures"][0]["case"] == "diversity-floor"
    assert not sim.apply_log


async def test_active_work_over_the_limit_fails_safely(service_factory, client, events):
    # nobody answers golden.validate within its 10 s timeout, but the cycle's
    # active-work budget is 2 s: the scheduled timeout fires first.
    service = await service_factory(max_execution_time_minutes=2 / 60)
    async def never_answer(msg):
        pass

    await client.subscribe("vvtv.golden.validate", cb=never_answer)
    reply = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.4}})
    records = await _finished(service, events, reply["cycle_id"])
    assert [r.to for r in records] == ["Analyzing", "Bounded", "Failed"]
    assert records[-1].trigger == "fail" and "timeout" in records[-1].detail["reason"]
    assert records[-1].cause["subject"].startswith("vvtv.autopilot.timer.fire.")
    await wait_for(lambda: any(a["kind"] == "cycle_failed" for a in events.of("evt.alert")), what="evt.alert")


async def test_replay_of_a_cycle_is_exact(service_factory, vvtv, client, events):
    from vvtv_autopilot.schemas.config import Config
    from vvtv_autopilot.statemachine.replay import compare, replay_cycle

    service = await service_factory()
    await vvtv(service)
    reply = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.6}})
    recorded = await _finished(service, events, reply["cycle_id"])
    start = await service.store.cycle_start(reply["cycle_id"])
    inbounds = await service.store.inbox_from(start.inbox_key)
    replayed = replay_cycle(Config.model_validate_json(start.config), start.state_before, inbounds, reply["cycle_id"])
    assert compare(recorded, replayed) == []
    assert len(replayed) == 6


async def test_a_strongly_harmful_canary_stops_before_its_deadline(service_factory, vvtv, client, events):
    service = await service_factory(canary_duration_minutes=2)
    await vvtv(service)
    reply = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.6}})
    records = await _finished(service, events, reply["cycle_id"])
    _assert_log(records, reply["cycle_id"], "RolledBack")
    canary, gated = records[3], records[4]
    assert gated.detail["rule"] == "early stop" and gated.detail["recommendation"] == "rollback"
    assert gated.at < canary.detail["deadline"]
    harmed = [k for k in gated.detail["decision"]["kpis"] if k["verdict"] == "harm"]
    assert [k["kpi"] for k in harmed] == ["error_rate"]
    result = gated.detail["canary_result"]
    assert set(result["recommendation"]) == {"Rollback"} and result["confidence_level"] == 0.95
    assert result["execution_time_seconds"] < 120 and result["canary_metrics"]["error_rate"]["n"] > 0
    rows = await service.store.cycles()
    assert rows[0]["outcome"] == "RolledBack"


async def test_an_override_puts_the_value_live_and_holds_it(service_factory, vvtv, client, events):
    service = await service_factory()
    sim = await vvtv(service)
    reply = await ctl(client, "override", {"actor": "ops", "parameter": "selection.diversity_weight", "value": 0.3,
                                           "hours": 1, "reason": "incident 42"})
    assert reply["ok"], reply
    await wait_for(lambda: sim.live == {"selection.diversity_weight": 0.3}, what="VVTV to run the override")
    await wait_for(lambda: json.loads(service.card.history.card_path.read_text())["selection"]["diversity_weight"] == 0.3,
                   what="the card to hold the override")
    assert service.card.history.current_version_id() == reply["version_id"]
    version = service.card.history.get_version(reply["version_id"])
    assert "override by ops: incident 42" in version.rationale
    refused = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.4}})
    assert refused["ok"] is False and "pinned" in refused["error"]


async def test_a_golden_service_that_does_not_answer_in_time_fails_the_validation(service_factory, client, events):
    async def too_slow(msg):
        pass  # listens, never answers within golden.timeout_seconds

    await client.subscribe("vvtv.golden.validate", cb=too_slow)
    service = await service_factory(golden={"timeout_seconds": 1.5})
    reply = await ctl(client, "propose", {"actor": "test", "changes": {"selection.diversity_weight": 0.4}})
    records = await _finished(service, events, reply["cycle_id"])
    assert [r.to for r in records] == ["Analyzing", "Bounded", "Failed"]
    assert records[-1].trigger == "golden_failed" and "no valid reply within" in records[-1].detail["error"]
