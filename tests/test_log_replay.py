"""Log replay (incident review): each cycle rebuilt from its stored transition log alone.

Real SQLite stores written by infra/store.py from simulated runs (tests/recorded_store.py):
every cycle of a run is consistent from its log, whatever its path (deployed, rolled back by
the gate or after a failed live apply, failed golden set or canary apply, no change); a
tampered store is caught at the seq it changes, naming the field; and the command line
(``replay --all --log``) says so and exits 0, or 1 with the problem.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import msgspec
import pytest
from transitions import Machine, MachineError

from recorded_store import fill_store
from sim_harness import Faults, SimWorld, sim_config
from vvtv_autopilot.infra.webdata import WebData
from vvtv_autopilot.schemas.errors import ReplayMismatch
from vvtv_autopilot.statemachine.definition import MACHINE_HASH, MOVES, STATES, TRANSITIONS
from vvtv_autopilot.statemachine.log_replay import LogReplay, replay_logs, verify_log

FAULTS = Faults(apply_timeout={2: {"canary"}}, apply_refuse={3: {"canary"}, 4: {"live"}, 6: {"live"}, 7: {"live"}, 9: {"live"}},
                golden_fail={5}, crash_in_canary={8: [600.0]}, crash_after_gate={10}, alert_storm={11: 3},
                duplicate_rate=0.05)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, tuple[Path, SimWorld]]:
    """Two real stores: a run with injected failures (every end a cycle can have but NoChange),
    and a quiet one (canaries, then mostly NoChange)."""
    out = {}
    for name, world, days in [
        ("faults", SimWorld(seed=5, config=sim_config(autopilot={"optimizer_step_sizing": "none"}), faults=FAULTS), 14),
        ("quiet", SimWorld(seed=11), 12),
    ]:
        world.run_days(days)
        path = tmp_path_factory.mktemp(name) / "data" / "autopilot.db"
        path.parent.mkdir(parents=True)
        asyncio.run(fill_store(path, world))
        out[name] = (path, world)
    return out


async def log_replay(path: Path) -> dict[str, LogReplay]:
    data = await WebData.open(path)
    try:
        rows, cycles = await data.transition_log()
    finally:
        await data.close()
    return {r.cycle_id: r for r in replay_logs(rows, cycles)}


def tampered(stores, tmp_path: Path, *sql: tuple[str, tuple]) -> Path:
    path = tmp_path / "data" / "autopilot.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(stores["faults"][0], path)
    db = sqlite3.connect(path)
    for statement, args in sql:
        assert db.execute(statement, args).rowcount == 1, statement
    db.commit()
    db.close()
    return path


def a_cycle(stores, outcome: str, trigger: str | None = None):
    world = stores["faults"][1]
    return next(c for c in world.cycles.values() if c.outcome == outcome
                and (trigger is None or any(t.trigger == trigger for t in c.transitions)))


def seq_of(cycle, trigger: str) -> int:
    return next(t.seq for t in cycle.transitions if t.trigger == trigger)


def test_the_move_table_is_the_transitions_machine():
    """MOVES (the log replay's table) allows exactly what the `transitions` machine built from
    the same definition allows, and to the same destination."""
    class Model:
        state: str

    triggers = {t["trigger"] for t in TRANSITIONS}
    for source in STATES:
        for trigger in triggers:
            m = Model()
            Machine(model=m, states=STATES, transitions=TRANSITIONS, initial=source, auto_transitions=False)
            try:
                m.trigger(trigger)
            except MachineError:
                assert (trigger, source) not in MOVES
            else:
                assert MOVES[(trigger, source)] == m.state


async def test_every_cycle_of_a_simulated_run_is_consistent_from_its_log(stores):
    seen = set()
    for name, (path, world) in stores.items():
        results = await log_replay(path)
        assert set(results) == set(world.cycles), name
        for cycle in world.cycles.values():
            r = results[cycle.cycle_id]
            assert r.problems == [], (name, cycle.cycle_id, [str(p) for p in r.problems])
            p = r.projection
            assert r.transitions == len(cycle.transitions) and p.seq == cycle.transitions[-1].seq
            assert p.outcome == cycle.outcome and p.stage == cycle.transitions[-1].to
            judge = next((t for t in cycle.transitions if t.trigger == "judge"), None)
            assert p.gate_recommendation == (judge.detail["recommendation"] if judge else None)
            bounded = next((t for t in cycle.transitions if t.trigger == "bounds_ok"), None)
            assert p.candidate_version == (bounded.detail["candidate_version"] if bounded else None)
            seen.add((cycle.outcome, cycle.transitions[-1].trigger,
                      judge.detail["recommendation"] if judge else None))
            verify_log(r)   # raises nothing
    # the paths these runs took: every end a cycle can have, a failed live apply included
    assert {("Deployed", "deployed", "proceed"), ("RolledBack", "rolled_back", "proceed"),
            ("Failed", "golden_failed", None), ("Failed", "canary_apply_failed", None),
            ("NoChange", "no_change", None)} <= seen, seen
    assert any(o == "RolledBack" and rec != "proceed" for o, _, rec in seen), seen


async def test_an_illegal_move_is_caught_at_its_seq(stores, tmp_path):
    c = a_cycle(stores, "Deployed")
    seq = seq_of(c, "golden_passed")
    path = tampered(stores, tmp_path, ("UPDATE transitions SET trigger = 'judge' WHERE cycle_id = ? AND seq = ?",
                                       (c.cycle_id, seq)))
    results = await log_replay(path)
    problems = [str(p) for p in results[c.cycle_id].problems]
    assert problems[0] == f"seq {seq}: trigger: 'judge' is not allowed from 'Bounded'", problems
    assert all(r.consistent for cid, r in results.items() if cid != c.cycle_id)
    with pytest.raises(ReplayMismatch, match=f"seq {seq}: trigger"):
        verify_log(results[c.cycle_id])


async def test_a_changed_destination_is_caught_at_its_seq(stores, tmp_path):
    c = a_cycle(stores, "Deployed")
    seq = seq_of(c, "deployed")
    path = tampered(stores, tmp_path, ("UPDATE transitions SET to_state = 'RolledBack' WHERE cycle_id = ? AND seq = ?",
                                       (c.cycle_id, seq)))
    r = (await log_replay(path))[c.cycle_id]
    assert r.problems[0].seq == seq and r.problems[0].field == "to", [str(p) for p in r.problems]
    assert str(r.problems[0]) == f"seq {seq}: to: 'RolledBack', but 'deployed' from 'Gated' leads to 'Deployed'"
    # the cycle's row (Deployed, completed) no longer matches the log's end either
    assert {"row.status", "row.state"} <= {p.field for p in r.problems}


async def test_a_gap_in_seq_is_caught_where_it_opens(stores, tmp_path):
    c = a_cycle(stores, "RolledBack")
    path = tampered(stores, tmp_path, ("DELETE FROM transitions WHERE cycle_id = ? AND seq = 3", (c.cycle_id,)))
    r = (await log_replay(path))[c.cycle_id]
    problems = [str(p) for p in r.problems]
    assert problems[0] == "seq 4: seq: expected seq 3: seq 3 missing from the log", problems
    # nothing after the gap is blamed on it again
    assert all(p.seq == 4 for p in r.problems), problems


async def test_a_gate_recommendation_that_contradicts_the_cycle_row_is_caught_at_the_judge(stores, tmp_path):
    c = a_cycle(stores, "Deployed")
    seq = seq_of(c, "judge")
    path = tampered(stores, tmp_path, (
        "UPDATE transitions SET detail = json_set(detail, '$.recommendation', 'rollback') WHERE cycle_id = ? AND seq = ?",
        (c.cycle_id, seq)))
    r = (await log_replay(path))[c.cycle_id]
    first = r.problems[0]
    assert (first.seq, first.field) == (seq, "detail.recommendation"), [str(p) for p in r.problems]
    assert str(first) == f"seq {seq}: detail.recommendation: the log says 'rollback', the cycle row says 'proceed'"
    # and the deployment that follows it is called out at its own seq
    assert any(p.seq == seq + 1 and "deployed, but the gate recommended 'rollback'" in p.message for p in r.problems)


async def test_times_going_back_and_another_machine_definition_are_reported(stores, tmp_path):
    c = a_cycle(stores, "RolledBack")
    last = c.transitions[-1]
    path = tampered(stores, tmp_path,
                    ("UPDATE transitions SET at = '2020-01-01T00:00:00Z' WHERE cycle_id = ? AND seq = ?",
                     (c.cycle_id, last.seq)),
                    ("UPDATE transitions SET machine = 'feedfacefeedface' WHERE cycle_id = ? AND seq = 2",
                     (c.cycle_id,)))
    r = (await log_replay(path))[c.cycle_id]
    problems = [str(p) for p in r.problems]
    assert problems[0] == (f"seq 2: machine: recorded under another machine definition (feedfacefeedface; this "
                           f"program's is {MACHINE_HASH}): its moves are not judged by this one"), problems
    assert r.other_machine == "feedfacefeedface"
    assert f"seq {last.seq}: at: 2020-01-01T00:00:00Z is before the previous transition's time" in problems


# --- the command line, against a real store ---------------------------------------------------------


async def cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "VVTV_AUTOPILOT_DATA_DIR")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "vvtv_autopilot.infra.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_replay_all_log_prints_the_summary_and_exits_0(stores):
    path, world = stores["faults"]
    n = sum(len(c.transitions) for c in world.cycles.values())
    code, out, err = await cli("replay", "--all", "--log", "--data-dir", str(path.parent))
    assert code == 0, out + err
    assert out.strip() == f"{len(world.cycles)} cycles, {n} transitions replayed from the log: all consistent"
    code, out, err = await cli("replay", "--all", "--log", "--json", "--data-dir", str(path.parent))
    summary = json.loads(out)
    assert code == 0 and summary["consistent"] == summary["cycles"] == len(world.cycles) and summary["inconsistent"] == []


async def test_cli_replay_all_log_exits_1_naming_the_cycle_and_the_seq_on_a_tampered_store(stores, tmp_path):
    c = a_cycle(stores, "Deployed")
    seq = seq_of(c, "judge")
    path = tampered(stores, tmp_path, (
        "UPDATE transitions SET detail = json_set(detail, '$.recommendation', 'rollback') WHERE cycle_id = ? AND seq = ?",
        (c.cycle_id, seq)))
    code, out, err = await cli("replay", "--all", "--log", "--data-dir", str(path.parent))
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[0].endswith("transitions replayed from the log: 1 inconsistent"), out
    assert lines[1] == f"  {c.cycle_id}:"
    assert lines[2] == f"    seq {seq}: detail.recommendation: the log says 'rollback', the cycle row says 'proceed'"
    # one cycle, by a unique prefix of its id
    code, out, err = await cli("replay", c.cycle_id[:9], "--log", "--data-dir", str(path.parent))
    assert code == 1 and f"log replay of {c.cycle_id}: INCONSISTENT" in out, out + err


async def test_cli_replay_refuses_a_bad_combination_of_options(stores):
    path = stores["faults"][0]
    code, out, err = await cli("replay", "--all", "--log", "--what-if", "x.yaml", "--data-dir", str(path.parent))
    assert code == 2 and "--log checks the stored transition log" in err, err
    code, out, err = await cli("replay", "--log", "--data-dir", str(path.parent))
    assert code == 2 and "give a CYCLE_ID or --all" in err, err


async def test_what_if_and_export_take_a_unique_prefix_of_a_cycle_id(stores, tmp_path):
    path, world = stores["faults"]
    c = a_cycle(stores, "Deployed")
    prefix = c.cycle_id[:9]               # one cycle a day: the date is unique
    exported = tmp_path / "c.jsonl"
    code, out, err = await cli("replay", prefix, "--export", str(exported), "--data-dir", str(path.parent))
    assert code == 0 and f"exported {c.cycle_id}:" in out, out + err
    assert json.loads(exported.read_text().splitlines()[0])["cycle_id"] == c.cycle_id
    same = tmp_path / "same.yaml"
    same.write_text("{}\n")
    code, out, err = await cli("replay", prefix, "--what-if", str(same), "--data-dir", str(path.parent))
    assert code == 0 and out.startswith(f"what-if for {c.cycle_id} under"), out + err
    code, out, err = await cli("replay", "2026", "--what-if", str(same), "--data-dir", str(path.parent))
    assert code == 1 and "is ambiguous" in err, out + err
    code, out, err = await cli("replay", "1999", "--export", str(exported), "--data-dir", str(path.parent))
    assert code == 1 and "no cycle '1999'" in err, out + err


def test_a_record_decoded_from_the_store_and_the_core_own_records_give_the_same_projection(stores):
    """Details as dicts (the core's records) or as JSON text (the store's rows): one result."""
    from vvtv_autopilot.statemachine.log_replay import CycleRow, records_as_rows, replay_log

    world = stores["faults"][1]
    rows = {r["cycle_id"]: r for st in world.steps for r in st.cycle_rows}
    enc = msgspec.json.Encoder()
    for c in world.cycles.values():
        r = rows[c.cycle_id]
        row = CycleRow(r["cycle_id"], r["started_at"], r["completed_at"], r["status"], enc.encode(r["proposed_changes"]),
                       enc.encode(r["deployment_result"]), r["error_message"])
        from_dicts = replay_log(c.cycle_id, records_as_rows(c.transitions), row)
        from_text = replay_log(c.cycle_id, [msgspec.structs.replace(t, detail=enc.encode(t.detail))
                                            for t in records_as_rows(c.transitions)], row)
        assert from_dicts.problems == from_text.problems == []
        assert from_dicts.projection == from_text.projection
