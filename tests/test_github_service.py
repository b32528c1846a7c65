"""The weekly triage files its GitHub issues through the outbox, with the real service, a real
nats-server, real SQLite and a local GitHub stand-in: created once, stored in the triage
report and shown by ``vvtv-autopilot triage``; a bad token gives one alert and no loop; a
SIGKILL between the outbox commit and the send (or in the middle of it) files exactly one issue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from conftest import WAIT, ctl, wait_for
from fake_github import FakeGitHub
from vvtv_autopilot.handlers import triage as T
from vvtv_autopilot.infra.store import Store

PARAM = "selection.diversity_weight"
TOKEN_ENV = "VVTV_AUTOPILOT_GITHUB_TOKEN"


@pytest.fixture
async def gh():
    server = await FakeGitHub().start()
    yield server
    await server.stop()


def triage_cfg(gh: FakeGitHub, enabled: bool = True) -> dict:
    return {"failure_threshold_for_patch": 1, "github_integration_enabled": enabled,
            "github": {"repository": gh.repository, "api_url": gh.api_url, "labels": ["autopilot", "triage"],
                       "assignees": ["alice"], "timeout_seconds": 5, "max_attempts": 3}}


async def failed_cycle(client, events) -> str:
    """A cycle that fails its golden-set validation (nobody answers it): one incident for PARAM."""
    reply = await ctl(client, "propose", {"actor": "test", "changes": {PARAM: 0.4}})
    assert reply["ok"], reply
    await wait_for(lambda: events.cycle_end(reply["cycle_id"]), what="the cycle to end")
    return reply["cycle_id"]


async def report_row(store: Store, report_id: str) -> dict | None:
    return next((r for r in await store.triage_reports(20) if r["report_id"] == report_id), None)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vvtv_autopilot.infra.cli", *args], capture_output=True, text=True,
                          timeout=120, env=os.environ | {TOKEN_ENV: ""})


async def test_the_weekly_triage_files_its_issue_once_and_comments_the_next_week(
        service_factory, client, events, gh, monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, gh.token)
    service = await service_factory(golden={"timeout_seconds": 0.5}, incident_triage=triage_cfg(gh))
    await failed_cycle(client, events)
    reply = await ctl(client, "triage", {"actor": "test", "run": True})
    assert reply["ok"] and reply["patch_suggestions"] == 1
    report_id = reply["report_id"]

    async def filed(rid):
        row = await report_row(service.store, rid)
        return row if row and row["github_issues"] and row["github_issues"][0].get("action") else None

    row = await wait_for(lambda: filed(report_id), what="the issue to be filed and stored")
    (issue,) = row["github_issues"]
    assert issue["created"] is True and issue["action"] == "created" and issue["number"] == 1
    assert issue["url"] == "https://github.example/vvtv/ops/issues/1"
    (post,) = gh.posts()
    assert post["headers"]["Authorization"] == f"Bearer {gh.token}"
    assert post["json"]["title"] == issue["title"] and PARAM in post["json"]["title"]
    assert post["json"]["labels"] == ["autopilot", "triage", "ValidationFailures"]
    assert post["json"]["assignees"] == ["alice"]
    assert T.report_marker(report_id) in post["json"]["body"] and "**Suggested range:**" in post["json"]["body"]
    # the evt.triage of the report carries the drafts; no alert
    assert any(e["report_id"] == report_id for e in events.of("evt.triage"))
    assert not [a for a in events.of("evt.alert") if a.get("kind") == "github_issues_failed"]

    # a replay of the same effect (marked unsent, its record lost, as after a crash) creates nothing new
    db = service.store._db
    await db.execute("UPDATE outbox SET sent_at = NULL WHERE kind = 'github_issues'")
    await db.execute("DELETE FROM github_issue_log")
    await db.execute("UPDATE triage_reports SET github_issues = '[]' WHERE report_id = ?", (report_id,))
    service.relay.wake()
    row = await wait_for(lambda: filed(report_id), what="the replayed effect to finish")
    assert row["github_issues"][0]["action"] == "created" and row["github_issues"][0]["replayed"] is True
    assert row["github_issues"][0]["number"] == 1
    assert len(gh.posts()) == 1 and len(gh.issues) == 1

    # the next triage, same parameter and category: a comment on the open issue, not a twin
    second = (await ctl(client, "triage", {"actor": "test", "run": True}))["report_id"]
    row2 = await wait_for(lambda: filed(second), what="the second report's comment")
    assert row2["github_issues"][0]["action"] == "commented" and row2["github_issues"][0]["number"] == 1
    assert len(gh.issues) == 1 and len(gh.comments()) == 1

    # shown by `vvtv-autopilot triage`, in words and as JSON
    data_dir = str(service.config.storage.data_dir)
    text = cli("triage", "--data-dir", data_dir, "--limit", "5")
    assert text.returncode == 0, text.stderr
    assert "GitHub issue #1 created: https://github.example/vvtv/ops/issues/1" in text.stdout
    assert "GitHub issue #1 still open, commented: https://github.example/vvtv/ops/issues/1#issuecomment-" in text.stdout
    assert "{'" not in text.stdout                      # no Python reprs
    as_json = json.loads(cli("triage", "--data-dir", data_dir, "--json").stdout)
    numbers = {r["report_id"]: [i["number"] for i in r["github_issues"]] for r in as_json["reports"]}
    assert numbers[report_id] == [1] and numbers[second] == [1]


async def test_with_the_switch_off_drafts_are_kept_and_nothing_is_sent(service_factory, client, events, gh, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, gh.token)
    service = await service_factory(golden={"timeout_seconds": 0.5}, incident_triage=triage_cfg(gh, enabled=False))
    await failed_cycle(client, events)
    report_id = (await ctl(client, "triage", {"actor": "test", "run": True}))["report_id"]
    row = await wait_for(lambda: report_row(service.store, report_id), what="the report")
    (draft,) = row["github_issues"]
    assert draft["created"] is False and draft["action"] is None and PARAM in draft["title"]
    await wait_for(lambda: any(e["report_id"] == report_id for e in events.of("evt.triage")), what="evt.triage")
    kinds = [r[0] for r in await (await service.store._db.execute("SELECT kind FROM outbox")).fetchall()]
    assert "github_issues" not in kinds and gh.requests == []


async def test_a_bad_token_raises_one_alert_and_does_not_loop(service_factory, client, events, gh, monkeypatch, caplog):
    wrong = "ghp_wrong_token_do_not_log_me"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    service = await service_factory(golden={"timeout_seconds": 0.5}, incident_triage=triage_cfg(gh))
    await failed_cycle(client, events)
    report_id = (await ctl(client, "triage", {"actor": "test", "run": True}))["report_id"]

    def alerts():
        return [a for a in events.of("evt.alert") if a.get("kind") == "github_issues_failed"]

    (alert,) = await wait_for(alerts, what="the GitHub alert")
    assert alert["report_id"] == report_id and alert["status"] == 401 and alert["error"] == "GitHubAuthError"
    assert "refused the token" in alert["message"] and TOKEN_ENV in alert["message"]
    row = await report_row(service.store, report_id)
    assert row["github_issues"][0]["action"] == "failed" and "refused the token" in row["github_issues"][0]["error"]
    assert len(gh.requests) == 1
    # the relay goes on with other effects (a later event is published) and never asks GitHub again
    await failed_cycle(client, events)
    assert len(gh.requests) == 1 and len(alerts()) == 1
    pending = await (await service.store._db.execute(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'github_issues' AND sent_at IS NULL")).fetchone()
    assert pending[0] == 0
    everything = caplog.text + json.dumps(events.items) + json.dumps(row)
    assert wrong not in everything


# --- a real subprocess, SIGKILLed between the outbox commit and the send -------------------------------


def _start(config: Path, url: str, log: Path, token: str) -> subprocess.Popen:
    out = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "vvtv_autopilot.infra.cli", "run", "--config", str(config),
                                 "--nats-url", url], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=os.environ | {TOKEN_ENV: token})
    finally:
        out.close()


async def _status(nc) -> dict | None:
    try:
        msg = await nc.request("vvtv.autopilot.ctl.status", b"{}", timeout=2)
        return json.loads(msg.data)
    except Exception:
        return None


@pytest.mark.parametrize("kill_at", ["lookup", "create"])
async def test_sigkill_between_commit_and_send_then_restart_files_exactly_one_issue(tmp_path, nats_server, gh, kill_at):
    """``lookup``: killed at GitHub's first request, so nothing was sent; ``create``: killed after
    GitHub created the issue and before its answer arrived. Either way, one issue after restart."""
    data = tmp_path / "data"
    config = tmp_path / "autopilot.yaml"
    config.write_text(
        "autopilot:\n  min_samples_per_arm: 30\n  sliding_bounds: {initial_half_width_fraction: 0.5}\n"
        "  incident_triage:\n    failure_threshold_for_patch: 1\n    github_integration_enabled: true\n"
        f"    github: {{repository: {gh.repository}, api_url: '{gh.api_url}', labels: [autopilot], timeout_seconds: 5}}\n"
        f"storage:\n  data_dir: {data}\n"
        "golden: {timeout_seconds: 0.5}\n"
        "kpis:\n  selection_entropy: {direction: increase}\n  error_rate: {direction: decrease, critical: true, margin: 0.1}\n")
    log = tmp_path / "service.log"
    nc = await nats.connect(nats_server.url)
    killed: list[int] = []
    proc = _start(config, nats_server.url, log, gh.token)

    def kill(_request) -> None:
        if not killed:
            proc.send_signal(signal.SIGKILL)
            killed.append(proc.pid)

    gh.hooks["list" if kill_at == "lookup" else "create"] = kill
    try:
        await wait_for(lambda: _status(nc), what="the service to answer status")
        msg = await nc.request("vvtv.autopilot.ctl.propose", json.dumps(
            {"actor": "test", "changes": {PARAM: 0.4}}).encode(), timeout=WAIT)
        cycle_id = json.loads(msg.data)["cycle_id"]

        async def idle():
            status = await _status(nc)
            return status and status["state"] == "Idle" and (status.get("last_cycle") or {}).get("cycle_id") == cycle_id

        await wait_for(idle, what="the failed cycle to end")
        msg = await nc.request("vvtv.autopilot.ctl.triage", json.dumps({"actor": "test", "run": True}).encode(), timeout=WAIT)
        report_id = json.loads(msg.data)["report_id"]
        await wait_for(lambda: killed, what=f"the service to reach GitHub's {kill_at} and be killed")
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert len(gh.issues) == (1 if kill_at == "create" else 0)

        proc = _start(config, nats_server.url, log, gh.token)

        async def filed():
            store = await Store.open(data / "autopilot.db")
            try:
                row = await report_row(store, report_id)
            finally:
                await store.close()
            return row if row and row["github_issues"] and row["github_issues"][0].get("action") else None

        row = await wait_for(filed, what="the issue to be filed after restart")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        await nc.close()
    assert len(gh.issues) == 1 and len(gh.posts()) == 1, "exactly one issue, created once"
    (issue,) = row["github_issues"]
    assert issue["created"] is True and issue["number"] == 1
    assert issue["action"] == "created" and issue.get("replayed", False) is (kill_at == "create")
    assert T.report_marker(report_id) in gh.issues[1]["body"]
    assert gh.token not in log.read_text(errors="replace")
