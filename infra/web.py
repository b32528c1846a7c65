"""The read-only dashboard and ``/metrics``, served by aiohttp on the service's event loop.

``vvtv-autopilot run --http HOST:PORT`` (or ``web.listen``) starts it with the service.
Loopback only unless credentials are set: a non-loopback address without a token in
``$VVTV_AUTOPILOT_WEB_TOKEN`` (``web.token_env``) is refused at start (ConfigError, exit 2).
With a token every request needs ``Authorization: Bearer TOKEN`` or HTTP basic auth
(user ``web.basic_auth_user``, password the token), loopback included.

Pages (all GET, except the what-if form's POST, which computes and changes nothing):
``/`` the dashboard, ``/fragment/live`` its self-refreshing part, ``/cycles/{id}`` the
incident review, ``/cycles/{id}/what-if`` (POST), ``/cycles/{id}/export.jsonl``,
``/api/status``, ``/api/cycles/{id}/report``, ``/metrics``, ``/static/{style.css,live.js}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import msgspec
import yaml
from aiohttp import web

from ..schemas.config import Config
from ..schemas.errors import ConfigError
from ..schemas.events import encode_recorded_cycle
from ..schemas.messages import parse_time
from ..statemachine.replay import Look, LookReplay, what_if
from . import web_pages as pages
from .clock import now
from .metrics import CONTENT_TYPE, AutopilotMetrics, MetricsSnapshot
from .report import build_report
from .webdata import WebData, first_divergence, overlay_config

log = logging.getLogger("vvtv_autopilot.web")

_STATIC = {"style.css": "text/css", "live.js": "text/javascript"}
_NO_STATUS = {"state": "Unknown", "paused": False, "cycle": None, "overrides": {}}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False   # a name other than localhost may resolve anywhere


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def web_token(config: Config, env: Mapping[str, str] | None = None) -> str | None:
    """The dashboard's credentials (None: none set). Refuses a non-loopback address without them."""
    env = os.environ if env is None else env
    token = env.get(config.web.token_env) or None
    if config.web.listen is not None:
        host, _ = split_listen(config.web.listen)
        if not is_loopback(host) and token is None:
            raise ConfigError([("web.listen", config.web.listen,
                                f"a non-loopback address needs credentials: the dashboard is served on loopback "
                                f"unless a token is set in ${config.web.token_env} (web.token_env)")])
    return token


class WebServer:
    def __init__(self, config: Config, db_path: Path, status: Callable[[], dict[str, Any] | None], *,
                 token: str | None = None):
        self.config = config
        self.db_path = db_path
        self.status_fn = status
        self.token = token
        self.data: WebData | None = None
        self.metrics = AutopilotMetrics()
        self._runner: web.AppRunner | None = None
        self._live: tuple[str, tuple[LookReplay, int]] | None = None
        self._live_lock = asyncio.Lock()
        self._performance: tuple[tuple, str] | None = None
        self._warm: asyncio.Task | None = None
        self.url: str | None = None

    # --- life cycle ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=2 * 1024 * 1024)
        app.router.add_get("/", self.dashboard)
        app.router.add_get("/fragment/live", self.live_fragment)
        app.router.add_get("/cycles/{cycle_id}", self.review)
        app.router.add_post("/cycles/{cycle_id}/what-if", self.what_if)
        app.router.add_get("/cycles/{cycle_id}/export.jsonl", self.export)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/api/cycles/{cycle_id}/report", self.api_report)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/static/{name}", self.static)
        return app

    async def start(self) -> str:
        host, port = split_listen(self.config.web.listen or "127.0.0.1:0")
        self.data = await WebData.open(self.db_path)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ConfigError([("web.listen", self.config.web.listen, f"cannot listen there: {exc.strerror or exc}")]) from None
        sock = site._server.sockets[0] if site._server and site._server.sockets else None  # the port picked for :0
        bound = sock.getsockname()[1] if sock else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        log.info("dashboard on %s (%s)", self.url, "credentials required" if self.token else "loopback, no credentials")
        self._warm = asyncio.create_task(self._warm_up(), name="web-warm-up")
        return self.url

    async def _warm_up(self) -> None:
        """Read and summarize the stored cycles once, so the first page is as fast as the next."""
        try:
            await self.data.summaries()
            await self.data.parameter_ranges()
        except Exception as exc:  # a page will read them again
            log.warning("warming the dashboard's cache failed: %r", exc)

    async def stop(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
            await asyncio.wait([self._warm], timeout=10)
            self._warm = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.data is not None:
            await self.data.close()
            self.data = None
        self.metrics.shutdown()

    # --- security -----------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self.token is not None and not self._authorized(request.headers.get("Authorization", "")):
            return web.Response(status=401, text="credentials required (Bearer token, or basic auth)\n",
                                headers={"WWW-Authenticate": 'Basic realm="vvtv-autopilot", charset="UTF-8"'})
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                               "img-src 'self' data:; frame-ancestors 'none'")
        return response

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        token = self.token or ""
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), token.encode())
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return (hmac.compare_digest(user.encode(), self.config.web.basic_auth_user.encode())
                    & hmac.compare_digest(password.encode(), token.encode()))
        return False

    # --- data ---------------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        try:
            return self.status_fn() or dict(_NO_STATUS)
        except Exception as exc:  # the page still shows the rest
            log.warning("status for the dashboard failed: %r", exc)
            return dict(_NO_STATUS, state=f"unknown ({exc})")

    async def _live_looks(self, status: dict[str, Any]) -> list[Look]:
        """The running canary's looks so far: a replay kept in memory, fed the new inbox rows."""
        cycle = status.get("cycle") or {}
        cycle_id = cycle.get("cycle_id")
        if not cycle_id or cycle.get("state") != "Canary":
            return []
        async with self._live_lock:
            previous = self._live[1] if self._live and self._live[0] == cycle_id else None
            replay = await self.data.live_replay(cycle_id, previous)
            if replay is None:
                return []
            self._live = (cycle_id, replay)
            return list(replay[0].looks)

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    # --- pages --------------------------------------------------------------------------------

    async def dashboard(self, request: web.Request) -> web.Response:
        status = self._status()
        looks = await self._live_looks(status)
        cycles = await self.data.summaries()
        ranges = await self.data.parameter_ranges()
        drift = await self.data.drift_events(20)
        triage = await self.data.triage_reports(5)
        at = now()
        window = self.config.autopilot.drift_monitoring.monitoring_window_days
        # The performance section changes only when a cycle is added or ends (or the window moves
        # on by a minute): rendered once per such change.
        key = (len(cycles), cycles[-1].cycle_id if cycles else None, cycles[-1].outcome if cycles else None,
               len(ranges), at.replace(second=0, microsecond=0))
        if self._performance is None or self._performance[0] != key:
            self._performance = (key, pages.performance_section(cycles, ranges, window, at))
        return self._html(pages.dashboard(status, looks, cycles, ranges, drift, triage, window_days=window,
                                          now=at, refresh=self.config.web.refresh_seconds,
                                          performance=self._performance[1]))

    async def live_fragment(self, request: web.Request) -> web.Response:
        status = self._status()
        return self._html(pages.live_fragment(status, await self._live_looks(status), now()))

    async def _report(self, cycle_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        summary = await self.data.summary(cycle_id)
        if summary is None:
            return None
        row = await self.data.cycle_row(cycle_id)
        transitions = [msgspec.to_builtins(t) for t in await self.data.transitions(cycle_id)]
        return build_report(row, transitions, await self.data.snapshot(cycle_id)), transitions

    async def review(self, request: web.Request) -> web.Response:
        cycle_id = request.match_info["cycle_id"]
        summary = await self.data.summary(cycle_id)
        built = await self._report(cycle_id)
        replayed = await self.data.looks_and_replay(cycle_id)
        if summary is None or built is None or replayed is None:
            return self._html(pages.error_page(404, f"no cycle {cycle_id} in the store"), 404)
        report, transitions = built
        looks, replay_transitions = replayed
        recorded = await self.data.transitions(cycle_id)
        divergence = first_divergence(recorded, replay_transitions[:len(recorded)] if summary.outcome is None
                                      else replay_transitions)
        config = json.loads(await self.data.cycle_config(cycle_id) or "{}")
        return self._html(pages.review(summary, report, transitions, looks, divergence, config))

    async def what_if(self, request: web.Request) -> web.Response:
        cycle_id = request.match_info["cycle_id"]
        rec = await self.data.recorded_cycle(cycle_id)
        if rec is None:
            return self._html(pages.error_page(404, f"no cycle {cycle_id} in the store"), 404)
        form = await request.post()
        try:
            overrides, edits = form_overrides(form, json.loads(rec.config))
            config = overlay_config(rec.config, overrides)
        except ConfigError as exc:
            return self._html(pages.error_page(400, f"what-if configuration refused: {exc}"), 400)
        result = await asyncio.to_thread(what_if, rec, config)
        return self._html(pages.what_if_page(cycle_id, result, edits))

    async def export(self, request: web.Request) -> web.Response:
        cycle_id = request.match_info["cycle_id"]
        rec = await self.data.recorded_cycle(cycle_id)
        if rec is None:
            return self._html(pages.error_page(404, f"no cycle {cycle_id} in the store"), 404)
        return web.Response(body=encode_recorded_cycle(rec), content_type="application/x-ndjson",
                            headers={"Content-Disposition": f'attachment; filename="{cycle_id}.jsonl"'})

    async def api_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status(), dumps=lambda v: json.dumps(v, default=str))

    async def api_report(self, request: web.Request) -> web.Response:
        built = await self._report(request.match_info["cycle_id"])
        if built is None:
            return web.json_response({"error": "no such cycle"}, status=404)
        return web.json_response(built[0], dumps=lambda v: json.dumps(v, default=str))

    async def prometheus(self, request: web.Request) -> web.Response:
        status = self._status()
        outcomes, gate = await self.data.outcome_counts()
        last = await self.data.last_cycle_started()
        snapshot = MetricsSnapshot(cycles_by_outcome=outcomes, gate_decisions=gate, counters=await self.data.counters(),
                                   paused=bool(status.get("paused")),
                                   canary_running=(status.get("cycle") or {}).get("state") == "Canary",
                                   last_cycle_age_seconds=None if last is None else max(0.0, (now() - parse_time(last)).total_seconds()))
        body = self.metrics.render(snapshot)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        data = (resources.files("vvtv_autopilot.infra") / "web" / name).read_bytes()
        return web.Response(body=data, content_type=_STATIC[name], headers={"Cache-Control": "max-age=300"})


def form_overrides(form: Mapping[str, Any], recorded: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The what-if form: an uploaded YAML file (keys over the recorded configuration) and the
    edited fields (only those that differ from the recorded values)."""
    overrides: dict[str, Any] = {}
    edits: list[str] = []
    upload = form.get("config")
    if upload is not None and getattr(upload, "file", None) is not None:
        text = upload.file.read()
        if text.strip():
            try:
                tree = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError([("config file", getattr(upload, "filename", "upload"), f"is not valid YAML: {exc}")]) from None
            if not isinstance(tree, dict):
                raise ConfigError([("config file", getattr(upload, "filename", "upload"), "must be a mapping of sections")])
            overrides = tree
            edits.append(f"file {getattr(upload, 'filename', 'upload')}")
    a = recorded["autopilot"]

    def number(name: str, text: Any) -> float:
        try:
            return float(text)
        except (TypeError, ValueError):
            raise ConfigError([(name, text, "is not a number")]) from None

    fields = {"confidence": ("autopilot", "statistical_confidence_threshold"),
              "canary_minutes": ("autopilot", "canary_duration_minutes"),
              "check_minutes": ("autopilot", "check_interval_minutes")}
    for field, (section, key) in fields.items():
        text = form.get(field)
        if text not in (None, "") and number(f"{section}.{key}", text) != float(recorded[section][key]):
            overrides.setdefault(section, {})[key] = number(f"{section}.{key}", text)
            edits.append(f"{section}.{key} = {text}")
    for kpi, spec in recorded["kpis"].items():
        for key in ("margin", "weight"):
            text = form.get(f"{key}.{kpi}")
            if text in (None, "", "None") or (spec.get(key) is not None and number(f"kpis.{kpi}.{key}", text) == float(spec[key])):
                continue
            overrides.setdefault("kpis", {}).setdefault(kpi, {})[key] = number(f"kpis.{kpi}.{key}", text)
            edits.append(f"kpis.{kpi}.{key} = {text}")
    return overrides, edits

