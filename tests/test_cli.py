"""The operator's command line against a running service on a real nats-server:
each verb is a subprocess (as an operator would run it) while the service
answers in this event loop; exit codes and printed replies as the README says."""

from __future__ import annotations

import asyncio
import json
import sys

from conftest import WAIT

EXIT_OK, EXIT_REFUSED = 0, 1


async def _cli(url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vvtv_autopilot.infra.cli", *args, "--nats-url", url, "--timeout", str(WAIT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=WAIT + 30)
    return proc.returncode, out.decode(), err.decode()


async def test_operator_verbs_reach_the_service_and_refusals_exit_one(service_factory, nats_server):
    service = await service_factory()
    url = nats_server.url

    code, out, err = await _cli(url, "status", "--json")
    assert code == EXIT_OK, err
    status = json.loads(out)
    assert status["state"] == "Idle" and status["card_version"] == service.card.history.current_version_id()

    code, out, err = await _cli(url, "pause", "--hours", "2", "--actor", "alice", "--reason", "incident 9")
    assert code == EXIT_OK and out.startswith("ok"), (out, err)
    code, out, _ = await _cli(url, "status")
    assert code == EXIT_OK and "paused until" in out and "by alice" in out

    code, out, err = await _cli(url, "promote", "--actor", "alice")  # no canary is running
    assert code == EXIT_REFUSED and out.startswith("refused:"), (out, err)

    code, out, err = await _cli(url, "resume", "--actor", "alice", "--json")
    assert code == EXIT_OK and json.loads(out)["ok"] is True, err
    code, out, _ = await _cli(url, "status", "--json")
    assert json.loads(out)["paused"] is False

    # every verb is in the audit log, with who asked and why
    audit = [(r["verb"], r["actor"], r["ok"]) for r in reversed(await service.store.commands_log())]
    assert [a for a in audit if a[0] != "status"] == [("pause", "alice", True), ("promote", "alice", False),
                                                       ("resume", "alice", True)]
    assert any(r["reason"] == "incident 9" for r in await service.store.commands_log())
