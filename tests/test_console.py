"""The operator's console (issue #10), as an operator sees it: each verb is a subprocess
against a running service on a real nats-server and real SQLite, and the tests read the
printed text, not only the exit code. A "second host" has only the bus URL: no data
folder, an empty working directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from conftest import WAIT, ctl, make_config, wait_for

from vvtv_autopilot.infra import discovery
from vvtv_autopilot.infra.service import Service

P = "selection.diversity_weight"
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "VVTV_AUTOPILOT_DATA_DIR")}
    return env | extra


async def _cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
               timeout: float = WAIT + 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vvtv_autopilot.infra.cli", *args, cwd=cwd, env=env or _env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_every_console_verb_from_a_second_host_with_only_the_bus_url(service_factory, vvtv, nats_server, client,
                                                                           events, tmp_path):
    service = await service_factory()
    await vvtv(service)
    url = nats_server.url
    elsewhere = tmp_path / "second-host"
    elsewhere.mkdir()

    async def cli(*args: str) -> tuple[int, str, str]:
        return await _cli(*args, "--nats-url", url, "--data-dir", str(elsewhere / "nothing-here"), cwd=elsewhere)

    # watch, started before the cycle: it follows it and ends with the decision
    polls: list[str] = []

    async def spied(msg) -> None:
        polls.append(msg.subject)

    spy = await client.subscribe("vvtv.autopilot.ctl.status", cb=spied)
    await client.flush()
    watch = asyncio.create_task(cli("watch", "--interval", "0.5", "--max-seconds", str(WAIT)))
    await wait_for(lambda: polls, what="watch's first status request (it then waits for a cycle)")
    await spy.unsubscribe()
    code, out, err = await cli("propose", f"{P}=0.45", "--actor", "alice", "--reason", "more variety")
    assert code == EXIT_OK and out.startswith("ok"), (out, err)
    cycle_id = next(b["result"]["cycle_id"] for b in events.of("evt.command") if b.get("verb") == "propose")
    await wait_for(lambda: events.cycle_end(cycle_id), what="the cycle to end")
    assert events.cycle_end(cycle_id)["outcome"] == "Deployed"
    code, out, err = await watch
    assert code == EXIT_OK, (out, err)
    assert f"decision: Deployed (gate: proceed)" in out and "per KPI" in out and "selection_entropy" in out, out
    assert "Canary -> Gated" in out and "gate decided: proceed" in out, out

    # status says what happened last, in words
    code, out, err = await cli("status")
    assert code == EXIT_OK and f"last cycle: {cycle_id} Deployed" in out and "service: instance" in out, (out, err)

    # history over the bus: outcome, gate and why
    code, out, err = await cli("history")
    assert code == EXIT_OK, err
    line = next(x for x in out.splitlines() if x.startswith(cycle_id))
    assert "Deployed" in line and "proceed" in line and "weighted improvement" in line, out
    code, out, _ = await cli("history", "--json")
    assert json.loads(out)[0]["cycle_id"] == cycle_id

    # the canary report, by a unique prefix of the cycle id
    code, out, err = await cli("report", cycle_id[:-2])
    assert code == EXIT_OK, err
    for needle in (f"cycle {cycle_id}  Deployed", "gate: PROCEED by rule", "selection_entropy", "error_rate",
                   "guardrail", "success metric", "canary plan (at Validated)", "timeline:", "Canary -> Gated",
                   "p(harm)=", "interval"):
        assert needle in out, (needle, out)
    code, out, _ = await cli("report", cycle_id, "--json")
    report = json.loads(out)
    assert report["gate"]["recommendation"] == "proceed" and {k["kpi"] for k in report["kpis"]} == {"selection_entropy", "error_rate"}
    assert all(k["interval"] and k["control"]["n"] > 0 and k["canary"]["n"] > 0 for k in report["kpis"])
    code, out, _ = await cli("report", "19990101")
    assert code == EXIT_REFUSED and "no cycle '19990101'" in out, out

    # replay over the bus
    code, out, err = await cli("replay", cycle_id)
    assert code == EXIT_OK and f"replay of {cycle_id}: exact" in out, (out, err)

    # bounds and triage over the bus, in words
    code, out, _ = await cli("bounds")
    assert code == EXIT_OK and P in out and "stable days" in out
    code, out, _ = await cli("triage")
    assert code == EXIT_OK and "no triage report yet" in out, out
    code, out, _ = await cli("triage", "--run", "--actor", "alice")
    assert code == EXIT_OK and out.startswith("triage report triage-"), out
    report_id = out.split()[2].rstrip(":")
    code, out, _ = await cli("triage")
    assert code == EXIT_OK and report_id in out and "{'" not in out, out

    # versions by prefix: history --versions shows 16 digits; rollback takes them (or fewer, if unique)
    code, out, _ = await cli("history", "--versions")
    listed = [x[2:].split()[0] for x in out.splitlines() if x[:2] in ("* ", "  ") and len(x.split()) > 1]
    live = next(x[2:].split()[0] for x in out.splitlines() if x.startswith("* "))
    old = next(v for v in listed if v != live)
    assert len(old) == 16
    code, out, err = await cli("rollback", "ab", "--actor", "ops")
    assert code == EXIT_REFUSED and "refused:" in out and "version_id" in out, (out, err)
    code, out, err = await cli("rollback", old, "--actor", "ops", "--reason", "editors saw a regression")
    assert code == EXIT_OK and out.startswith(f"applied by VVTV: the card is now {old}"), (out, err)
    assert service.card.history.current_version_id().startswith(old)
    code, out, _ = await cli("status")
    assert f"card: {old}" in out


async def test_the_cli_finds_the_service_from_its_data_dir_and_says_when_it_cannot(service_factory, tmp_path):
    service = await service_factory()
    data_dir = str(service.config.storage.data_dir)
    info = discovery.read(Path(data_dir))
    assert info["url"] == service.nats_url and info["pid"] == os.getpid() and info["instance_id"] == service.instance_id
    code, out, err = await _cli("status", "--data-dir", data_dir)
    assert code == EXIT_OK and "state: Idle" in out and f"instance {service.instance_id}" in out, (out, err)
    # the environment: VVTV_AUTOPILOT_DATA_DIR is a data dir like the flag
    code, out, err = await _cli("status", env=_env(VVTV_AUTOPILOT_DATA_DIR=data_dir))
    assert code == EXIT_OK and "state: Idle" in out, (out, err)
    # nothing to find: exit 3, saying where it looked
    empty = tmp_path / "empty"
    code, out, err = await _cli("status", "--data-dir", str(empty))
    assert code == EXIT_UNREACHABLE and "no running service in" in err and str(empty) in err, (out, err)
    code, out, err = await _cli("history", "--data-dir", str(empty))
    assert code == EXIT_UNREACHABLE and "no store at" in err, (out, err)
    # bad usage: exit 2, and a subcommand shows only its own options
    code, out, err = await _cli("history", "--limit", "0")
    assert code == EXIT_USAGE and "outside [1, 1000]" in err
    code, out, _ = await _cli("run", "--help")
    assert code == EXIT_OK and "--json" not in out and "--inbox-prefix" not in out and "embedded nats-server" in out
    code, out, _ = await _cli("report", "--help")
    assert "canary report" in out and "--nats-url" in out and "$NATS_URL" in out
    # at a graceful stop the file goes
    await service.stop()
    assert discovery.read(Path(data_dir)) is None
    # a stopped service: the reads fall back to its store
    code, out, err = await _cli("history", "--data-dir", data_dir)
    assert code == EXIT_OK and "read from the store" in err and "no cycle yet" in out, (out, err)


async def _vvtv_apply(nc, answer):
    """A stand-in VVTV deployer: ``answer(request)`` returns the reply dict, or None for no reply."""
    seen: list[dict] = []

    async def on(msg):
        req = json.loads(msg.data)
        seen.append(req)
        reply = answer(req)
        if reply is not None:
            await msg.respond(json.dumps(reply).encode())

    sub = await nc.subscribe("vvtv.business_logic.apply", cb=on)
    await nc.flush()
    return sub, seen


async def test_a_refused_or_unanswered_override_leaves_card_history_and_reply_consistent(
        tmp_path, nats_server, client, events):
    service = Service(make_config(tmp_path, nats_server.url, apply_timeout_seconds=2, manual_override_hours=2))
    await service.start()
    try:
        hist = service.card.history
        card_bytes, vid = hist.card_path.read_bytes(), hist.current_version_id()
        versions = sorted(v.version_id for v in hist.get_version_history())

        async def unchanged(reply_text: str) -> None:
            assert hist.card_path.read_bytes() == card_bytes and hist.current_version_id() == vid
            assert sorted(v.version_id for v in hist.get_version_history()) == versions
            status = await ctl(client, "status", {})
            assert status["card_version"] == vid and status["overrides"] == {} and status["pending_live"] is None
            assert f"the card stays at {vid[:16]}" in reply_text

        # refused by VVTV: the reply says so, nothing changed
        sub, seen = await _vvtv_apply(client, lambda req: {"applied": False, "version_id": req["version_id"],
                                                           "arm": "live", "error": "frozen by the editors"})
        code, out, err = await _cli("override", P, "0.3", "--actor", "alice", "--nats-url", nats_server.url)
        assert code == EXIT_REFUSED, (out, err)
        assert out.startswith("refused: refused by VVTV: frozen by the editors; nothing changed"), out
        assert f"{P} is not pinned" in out
        await unchanged(out)
        assert [r["arm"] for r in seen] == ["live"]
        await sub.unsubscribe()

        # no answer: the reply says so after the timeout; the card is sent again so a late apply is undone
        sub, seen = await _vvtv_apply(client, lambda req: None)
        asking = asyncio.create_task(_cli("override", P, "0.3", "--actor", "alice", "--nats-url", nats_server.url))

        async def waiting() -> bool:  # status answers meanwhile, and shows what waits
            return (await ctl(client, "status", {}))["pending_live"] is not None

        await wait_for(waiting, what="status to show the override waiting for VVTV")
        code, out, err = await asking
        assert code == EXIT_REFUSED and "no answer from VVTV (no reply within 2" in out, (out, err)
        await unchanged(out)
        restore = await wait_for(lambda: [r for r in seen if r["version_id"] == vid], what="the live card sent again")
        assert restore[0]["arm"] == "live" and restore[0]["parameters"] == {P: 0.35}
        await sub.unsubscribe()
        alerts = [a for a in events.of("evt.alert") if a.get("kind") == "apply_failed"]
        assert len(alerts) == 2 and all("nothing changed" in a["message"] for a in alerts)

        # applied: now, and only now, the card, the history and the pin change
        sub, seen = await _vvtv_apply(client, lambda req: {"applied": True, "version_id": req["version_id"],
                                                           "arm": "live", "error": None})
        code, out, err = await _cli("override", P, "0.3", "--actor", "alice", "--nats-url", nats_server.url)
        assert code == EXIT_OK and out.startswith("applied by VVTV: the card is now"), (out, err)
        new_vid = hist.current_version_id()
        assert new_vid != vid and out.startswith(f"applied by VVTV: the card is now {new_vid[:16]}; {P} pinned until")
        assert json.loads(hist.card_path.read_bytes())["selection"]["diversity_weight"] == 0.3
        status = await ctl(client, "status", {})
        assert status["card_version"] == new_vid and status["overrides"][P]["value"] == 0.3
        assert new_vid in [v.version_id for v in hist.get_version_history()]
        await sub.unsubscribe()
        # the audit log has the ask and VVTV's three answers
        log = [(r["verb"], r["ok"]) for r in reversed(await service.store.commands_log())]
        assert log == [("override", True), ("apply-result", False), ("override", True), ("apply-result", False),
                       ("override", True), ("apply-result", True)]
    finally:
        await service.stop()


async def test_the_service_log_tells_a_failed_safe_cycle_in_words(tmp_path):
    """The real service (`vvtv-autopilot run`, embedded server) with nobody answering the golden
    set: two cycles fail safe, then the fail-safe pause. The log says each step and why; the CLI
    finds the service through its data folder alone."""
    data_dir = tmp_path / "data"
    cfg = tmp_path / "autopilot.yaml"
    cfg.write_text("autopilot:\n  validation_failures_before_pause: 2\n  canary_duration_minutes: 0.1\n"
                   "golden: {timeout_seconds: 2}\n")
    log_path = tmp_path / "service.log"
    env = _env()
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vvtv_autopilot.infra.cli", "run", "--config", str(cfg), "--data-dir", str(data_dir),
            "--log-format", "json", stdout=log, stderr=log, env=env)
    try:
        await wait_for(lambda: discovery.read(data_dir), what="service.json")
        cycles = []
        for _ in range(2):
            code, out, err = await _cli("run-now", "--actor", "ops", "--data-dir", str(data_dir), "--json")
            assert code == EXIT_OK, (out, err)
            cycles.append(json.loads(out)["cycle_id"])

            async def ended(cid=cycles[-1]):
                c, o, _ = await _cli("status", "--data-dir", str(data_dir), "--json")
                return c == 0 and (json.loads(o).get("last_cycle") or {}).get("cycle_id") == cid

            await wait_for(ended, what="the cycle to fail safe")
        code, out, _ = await _cli("status", "--data-dir", str(data_dir))
        assert "paused until" in out and "by fail-safe" in out and f"last cycle: {cycles[-1]} Failed" in out, out
        code, out, _ = await _cli("history", "--data-dir", str(data_dir))
        assert all(f"golden set failed" in x for x in out.splitlines()[1:]), out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=WAIT) == 0
    assert discovery.read(data_dir) is None  # removed at a graceful stop
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    story = [x for x in lines if x["logger"] == "vvtv_autopilot.story"]
    assert all({"ts", "level", "msg"} <= set(x) for x in lines)
    for cid in cycles:
        mine = [x for x in story if x.get("cycle_id") == cid and x.get("kind") == "transition"]
        assert [(x["from"], x["to"]) for x in mine] == [("Pending", "Analyzing"), ("Analyzing", "Bounded"),
                                                        ("Bounded", "Failed")], mine
        failed = mine[-1]
        assert failed["level"] == "WARNING" and "golden set failed" in failed["msg"], failed
    pause = [x for x in story if x.get("kind") == "paused"]
    assert len(pause) == 1 and pause[0]["level"] == "WARNING" and "by fail-safe" in pause[0]["msg"]
    assert "2 consecutive golden-set validation failures" in pause[0]["msg"]
    commands = [x["msg"] for x in story if x.get("kind") == "command"]
    assert sum("command run-now by ops via ctl accepted: cycle" in m for m in commands) == 2, commands
    assert not [x for x in story if "metric" in x["msg"]]
    if os.environ.get("CONSOLE_EVIDENCE_DIR"):  # the closing note's evidence: this run's log
        Path(os.environ["CONSOLE_EVIDENCE_DIR"], "failed-safe-cycle.log.jsonl").write_text(log_path.read_text())
