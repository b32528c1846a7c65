"""Requests that fail are reported as what happened, on a real nats-server:
nobody listening is "no responder" (at once, not a timeout), a reply that is
not JSON is said to be so, and only a request that waited is "no reply within".
The outbox relay's requests to VVTV, the CLI's control requests, and a bug in
the rollback's file-system half (an internal error, not the history's refusal)."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

from conftest import WAIT, ctl, make_config

from vvtv_autopilot.infra.relay import OutboxRelay
from vvtv_autopilot.schemas.events import Effect

LONG = 300.0  # a timeout no test waits for: a failure reported sooner was not a timeout


def _relay(tmp_path: Path, nc, timeout: float = LONG) -> OutboxRelay:
    config = make_config(tmp_path, "nats://unused", golden={"timeout_seconds": timeout}, apply_timeout_seconds=timeout)
    return OutboxRelay(config, None, nc, None, None, None, asyncio.Event())


def _apply() -> Effect:
    return Effect("e-apply", "apply", {"request": {"cycle_id": "c1", "effect_id": "e-apply"}, "purpose": "canary"})


def _golden() -> Effect:
    return Effect("e-golden", "golden", {"request": {"cycle_id": "c1"}})


async def _answer(client, subject: str, data: bytes | None) -> None:
    async def on(msg):
        if data is not None:
            await msg.respond(data)

    await client.subscribe(subject, cb=on)
    await client.flush()


async def test_nobody_listening_is_no_responder_at_once(tmp_path, client):
    relay = _relay(tmp_path, client)
    started = time.monotonic()
    applied = await asyncio.wait_for(relay._apply(_apply()), WAIT)
    golden = await asyncio.wait_for(relay._golden(_golden()), WAIT)
    assert time.monotonic() - started < WAIT
    assert applied.applied is False and "no responder on vvtv.business_logic.apply" in applied.error
    assert golden.passed is False and "no responder on vvtv.golden.validate" in golden.error
    assert "within" not in applied.error + golden.error


async def test_a_reply_that_is_not_json_is_said_to_be_so(tmp_path, client):
    await _answer(client, "vvtv.business_logic.apply", b"<html>502 Bad Gateway</html>")
    await _answer(client, "vvtv.golden.validate", b"{oops")
    relay = _relay(tmp_path, client)
    applied = await asyncio.wait_for(relay._apply(_apply()), WAIT)
    golden = await asyncio.wait_for(relay._golden(_golden()), WAIT)
    assert applied.applied is False and applied.error.startswith("VVTV replied with something that is not valid JSON")
    assert "<html>502 Bad Gateway</html>" in applied.error
    assert golden.passed is False and "not valid JSON" in golden.error and "{oops" in golden.error
    assert "within" not in applied.error + golden.error


async def test_a_golden_reply_of_the_wrong_shape_fails_the_validation_naming_it(tmp_path, client):
    await _answer(client, "vvtv.golden.validate", b'{"passed": "yes"}')
    golden = await asyncio.wait_for(_relay(tmp_path, client)._golden(_golden()), WAIT)
    assert golden.passed is False and "lacks a boolean `passed`" in golden.error and '"yes"' in golden.error


async def test_only_a_request_that_waited_is_no_reply_within(tmp_path, client):
    await _answer(client, "vvtv.business_logic.apply", None)  # listens, never answers
    await _answer(client, "vvtv.golden.validate", None)
    relay = _relay(tmp_path, client, timeout=0.5)
    applied = await asyncio.wait_for(relay._apply(_apply()), WAIT)
    golden = await asyncio.wait_for(relay._golden(_golden()), WAIT)
    assert applied.applied is False and applied.error == "no reply within 0.5s"
    assert golden.passed is False and golden.error == "no valid reply within 0.5s"


async def _cli(url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vvtv_autopilot.infra.cli", *args, "--nats-url", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=WAIT + 30)
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_says_no_responder_rather_than_a_timeout(nats_server):
    code, out, err = await _cli(nats_server.url, "status", "--timeout", str(LONG))  # no service is running
    assert code == 3, (out, err)
    assert "no autopilot is listening on vvtv.autopilot.ctl.status (no responder)" in err
    assert "did not answer" not in err and "within" not in err


async def test_the_cli_says_when_the_reply_is_not_json(nats_server, client):
    await _answer(client, "vvtv.autopilot.ctl.status", b"\x00garbage")
    code, out, err = await _cli(nats_server.url, "status", "--timeout", str(WAIT))
    assert code == 1, (out, err)
    assert "the autopilot replied to status with something that is not valid JSON" in err and "garbage" in err
    assert "did not answer" not in err and "Traceback" not in err


async def test_a_bug_in_the_rollback_is_an_internal_error_not_a_refusal(service_factory, client, monkeypatch, caplog):
    service = await service_factory()
    vid = service.card.history.current_version_id()

    def broken(version_id, **kw):
        raise ZeroDivisionError("a bug")

    # the target is read and verified before VVTV is asked (the card is written only after it applied)
    monkeypatch.setattr(service.card.history, "load_card", broken)
    with caplog.at_level(logging.ERROR, logger="vvtv_autopilot.service"):
        reply = await ctl(client, "rollback", {"actor": "ops", "version_id": vid})
    assert reply["ok"] is False and reply["error"] == "internal error: a bug"
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)

    def disk_refuses(version_id, **kw):
        raise PermissionError(13, "Permission denied", str(service.card.history.card_path))

    monkeypatch.setattr(service.card.history, "load_card", disk_refuses)
    reply = await ctl(client, "rollback", {"actor": "ops", "version_id": vid})
    assert reply["ok"] is False and "Permission denied" in reply["error"] and "internal error" not in reply["error"]
