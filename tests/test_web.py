"""The dashboard, incident review and what-if replay, in a real browser (headless Chromium over
CDP, tests/cdp.py), against a running service (real nats-server, SQLite, simulated VVTV)
with a deployed and a rolled-back cycle; and the CLI's replay options, /metrics and the
web's security. One service and one browser for the whole module; screenshots go to docs/.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import nats
import pytest
import pytest_asyncio

from cdp import Browser
from conftest import WAIT, Events, ctl, make_config, wait_for
from vvtv_autopilot.infra.natsserver import EmbeddedNats
from vvtv_autopilot.infra.service import Service
from vvtv_autopilot.infra.simulator import SimulatedVVTV
from vvtv_autopilot.infra.web import WebServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "vvtv_autopilot.infra.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=env or dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    return proc.returncode, out.decode(), err.decode()


async def run_cycle(w, value: float, outcome: str | None = None) -> str:
    reply = await ctl(w.client, "propose", {"actor": "test", "reason": "web test", "changes": {"selection.diversity_weight": value}})
    assert reply["ok"], reply
    cycle_id = reply["cycle_id"]
    if outcome is not None:
        end = await wait_for(lambda: w.events.cycle_end(cycle_id), what=f"the end of {cycle_id}")
        assert end["outcome"] == outcome, end
    return cycle_id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    server = EmbeddedNats(tmp / "nats")
    await server.start()
    client = await nats.connect(server.url)
    events = Events()
    await events.attach(client)
    config = make_config(tmp, server.url, canary_duration_minutes=0.2)
    config = config.model_copy(update={"web": config.web.model_copy(update={"listen": "127.0.0.1:0", "refresh_seconds": 0.3})})
    service = Service(config)
    await service.start()
    sim = SimulatedVVTV(client)
    from vvtv_autopilot.handlers.card import parameter_values
    sim.live = {k: float(v) for k, v in parameter_values(service.core.state.card, list(config.parameters)).items()}
    await sim.start(tick=0.1)
    w = SimpleNamespace(tmp=tmp, server=server, client=client, events=events, service=service, sim=sim,
                        url=service.web.url, data_dir=str(config.storage.data_dir))
    w.deployed = await run_cycle(w, 0.45, "Deployed")
    w.rolled_back = await run_cycle(w, 0.6, "RolledBack")
    yield w
    await sim.stop()
    await service.stop()
    await asyncio.wait_for(client.close(), timeout=10)
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(tmp_path_factory):
    b = await Browser(tmp_path_factory.mktemp("chromium")).start()
    yield b
    await b.close()


async def test_the_live_canary_view_changes_as_looks_arrive(world, browser):
    cycle_id = await run_cycle(world, 0.452)   # a tiny change: the gate looks until the deadline
    await browser.goto(world.url + "/")
    await browser.wait_js(f"document.querySelector('#live a') && document.querySelector('#live a').textContent === '{cycle_id}'"
                          " && !!document.getElementById('looks')", "the running canary on the dashboard")
    first = int(await browser.js("document.getElementById('looks').dataset.looks"))
    # the page refreshes by itself (no reload): the look count and the lift chart's points grow
    later = await browser.wait_js(f"(() => {{ const l = document.getElementById('looks'); "
                                  f"return l && +l.dataset.looks >= {max(first + 1, 2)} && +l.dataset.looks; }})()",
                                  "a new look to appear without reloading")
    assert later > first
    points = await browser.js("Math.max(0, ...[...document.querySelectorAll('#live svg.chart')].map(s => +s.dataset.points))")
    assert points >= later >= 2
    samples = await browser.js("[...document.querySelectorAll('#samples tbody tr')].map(r => r.innerText)")
    assert any("selection_entropy" in s for s in samples) and all(any(c.isdigit() for c in s) for s in samples)
    heading = await browser.js("document.getElementById('heading').textContent")
    assert heading.startswith(("undecided", "heading to", "decided")), heading
    await browser.screenshot(DOCS / "dashboard.png")
    world.live = cycle_id
    await wait_for(lambda: world.events.cycle_end(cycle_id), what=f"the end of {cycle_id}")


async def test_the_dashboard_lists_the_cycles_with_their_reasons_and_charts_with_data(world, browser):
    await browser.goto(world.url + "/")
    rows = await browser.js("[...document.querySelectorAll('#cycles tbody tr')].map(r => "
                            "({cycle: r.cells[1].innerText, outcome: r.cells[2].innerText, reason: r.cells[3].innerText, "
                            "changes: r.cells[4].innerText, version: r.cells[5].innerText}))")
    by_id = {r["cycle"]: r for r in rows}
    deployed, rolled = by_id[world.deployed], by_id[world.rolled_back]
    assert deployed["outcome"] == "Deployed" and "non-inferior within its margin" in deployed["reason"]
    assert "selection.diversity_weight" in deployed["changes"] and "0.45" in deployed["changes"] and deployed["version"]
    assert rolled["outcome"] == "RolledBack" and "harm beyond the margin in error_rate" in rolled["reason"]
    state = await browser.js("document.getElementById('state').textContent")
    assert state in ("Idle", "Running")
    assert "not paused" in await browser.js("document.getElementById('status-box').innerText")
    charts = await browser.js("[...document.querySelectorAll('#performance svg.chart')].map(s => "
                              "[s.getAttribute('aria-label'), +s.dataset.points])")
    titles = {t: n for t, n in charts}
    assert titles["error_rate: live mean by cycle (green: deploy, red: rollback)"] >= 2
    assert titles["selection.diversity_weight: sliding range and proposed value"] >= 3
    assert await browser.js("document.querySelectorAll('#performance line.marker').length") >= 4  # deploys and rollbacks
    rates = await browser.js("document.getElementById('rates').innerText")
    assert "deployment success rate" in rates and "inconclusive share" in rates


async def test_the_review_page_shows_the_report_the_timeline_the_looks_and_an_exact_replay(world, browser):
    await browser.goto(f"{world.url}/cycles/{world.deployed}")
    report = await browser.js("[...document.querySelectorAll('#report-table tbody tr')].map(r => [...r.cells].map(c => c.innerText))")
    kpis = {row[0]: row for row in report}
    assert set(kpis) == {"selection_entropy", "error_rate"}
    assert kpis["selection_entropy"][9] == "improvement" and kpis["error_rate"][9] == "non_inferior"
    assert kpis["error_rate"][1] == "guardrail" and kpis["error_rate"][6] == "0.1"          # margin
    assert "n=" in kpis["error_rate"][2] and kpis["error_rate"][4].endswith("%")            # samples, lift
    assert "PROCEED" in await browser.js("document.querySelector('#report .gate').innerText")
    timeline = await browser.js("[...document.querySelectorAll('#timeline tbody tr')].map(r => r.cells[2].innerText + ' ' + r.cells[3].innerText)")
    assert [t.split()[-2] for t in timeline] == ["Analyzing", "Bounded", "Validated", "Canary", "Gated", "Deployed"]
    judge_row = await browser.js("[...document.querySelectorAll('#timeline tbody tr')][4].innerText")
    assert "judge" in judge_row and "p(improvement)=" in judge_row and "timer.fire" in judge_row
    looks = await browser.js("[...document.querySelectorAll('#looks-table tbody tr')].map(r => r.cells[3].innerText)")
    assert looks and looks[-1] == "proceed" and all(a == "continue" for a in looks[:-1])
    assert await browser.js("document.querySelectorAll('#evidence svg.chart').length") >= 3
    assert await browser.js("Math.min(...[...document.querySelectorAll('#evidence svg.chart')].map(s => +s.dataset.points))") >= 1
    assert await browser.js("document.getElementById('replay-result').textContent") == "exact"
    await browser.screenshot(DOCS / "review.png")
    # the rolled-back cycle's report names the harm
    await browser.goto(f"{world.url}/cycles/{world.rolled_back}")
    verdicts = await browser.js("[...document.querySelectorAll('#report-table tbody tr')].map(r => r.cells[0].innerText + ':' + r.cells[9].innerText)")
    assert "error_rate:harm" in verdicts, verdicts
    # the live cycle's looks, replayed: several, the last one decides
    await browser.goto(f"{world.url}/cycles/{world.live}")
    looks = await browser.js("[...document.querySelectorAll('#looks-table tbody tr')].map(r => r.cells[3].innerText)")
    assert len(looks) >= 2 and looks[-1] != "continue"


def _recorded_judge(world, cycle_id: str) -> dict:
    import sqlite3
    db = sqlite3.connect(Path(world.data_dir) / "autopilot.db")
    try:
        detail = db.execute("SELECT detail FROM transitions WHERE cycle_id = ? AND trigger = 'judge'", (cycle_id,)).fetchone()[0]
    finally:
        db.close()
    return json.loads(detail)["decision"]


async def test_what_if_on_the_page_turns_the_recorded_proceed_into_a_rollback_with_a_stricter_margin(world, browser):
    decision = _recorded_judge(world, world.deployed)
    err = next(k for k in decision["kpis"] if k["kpi"] == "error_rate")
    assert err["interval"][1] > 0.01   # the numbers: the error rate's interval reaches past a 1 % margin
    await browser.goto(f"{world.url}/cycles/{world.deployed}")
    await browser.js("document.querySelector('input[name=\"margin.error_rate\"]').value = '0.01'")
    await browser.submit("#what-if-form form")
    outcome = await browser.js("document.getElementById('what-if-outcome').innerText")
    assert "recorded outcome Deployed" in outcome and "what-if outcome RolledBack" in outcome, outcome
    diffs = await browser.js("[...document.querySelectorAll('#differences tbody tr')].map(r => [...r.cells].map(c => c.innerText))")
    judge_seq = str(next(i + 1 for i, t in enumerate(await world.service.store.transitions(world.deployed)) if t.trigger == "judge"))
    assert diffs[0][0] == judge_seq and "recommendation=proceed" in diffs[0][2] and "recommendation=" in diffs[0][3]
    assert "recommendation=proceed" not in diffs[0][3]
    assert any("RolledBack" in d[3] for d in diffs)
    await browser.screenshot(DOCS / "what-if.png")
    # a configuration the schema refuses is refused with the key and the rule
    await browser.goto(f"{world.url}/cycles/{world.deployed}")
    await browser.js("document.querySelector('input[name=\"confidence\"]').value = '1.5'")
    await browser.submit("#what-if-form form")
    error = await browser.js("document.getElementById('error').innerText")
    assert "autopilot.statistical_confidence_threshold" in error


async def test_cli_what_if_export_from_file_and_tampering(world, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text("kpis:\n  error_rate: {margin: 0.01}\n")
    code, out, err = await run_cli("replay", world.deployed, "--what-if", str(strict), "--json", "--data-dir", world.data_dir)
    assert code == 0, err
    result = json.loads(out)
    assert result["recorded_outcome"] == "Deployed" and result["outcome"] == "RolledBack"
    assert result["differences"][0]["recorded"]["trigger"] == "judge"
    assert result["differences"][0]["what_if"]["recommendation"] != "proceed"
    code, out, err = await run_cli("replay", "--all", "--what-if", str(strict), "--data-dir", world.data_dir)
    assert code == 0 and "Deployed cycles would have ended RolledBack" in out, out + err
    # export, then replay from the file: identical
    exported = tmp_path / "cycle.jsonl"
    code, out, err = await run_cli("replay", world.deployed, "--export", str(exported), "--data-dir", world.data_dir)
    assert code == 0 and exported.exists(), err
    code, out, err = await run_cli("replay", "--from-file", str(exported), "--json")
    assert code == 0 and json.loads(out)["exact"] is True, out + err
    # tamper with the canary's selection_entropy batches: caught at the gate's step, nothing before it
    lines = exported.read_text().splitlines()
    tampered = []
    for line in lines:
        row = json.loads(line)
        ev = row.get("event") if isinstance(row, dict) else None
        if ev and ev.get("type") == "metric" and ev["arm"] == "canary" and ev["kpi"] == "selection_entropy":
            ev["mean"] *= 0.9
            line = json.dumps(row)
        tampered.append(line)
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("\n".join(tampered) + "\n")
    code, out, err = await run_cli("replay", "--from-file", str(bad), "--json")
    result = json.loads(out)
    judge_seq = next(t.seq for t in await world.service.store.transitions(world.deployed) if t.trigger == "judge")
    assert code == 1 and result["exact"] is False and result["seq"] == judge_seq, out
    assert result["problems"][0].startswith(f"seq {judge_seq}:")
    # a malformed file is a usage error naming the line
    bad.write_text("\n".join(lines[:2] + ['{"key": 1}'] + lines[3:]) + "\n")
    code, out, err = await run_cli("replay", "--from-file", str(bad))
    assert code == 2 and "line 3" in err


async def test_metrics_in_the_prometheus_text_format(world):
    async with aiohttp.ClientSession() as http:
        async with http.get(world.url + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['vvtv_autopilot_cycles_total{outcome="Deployed"}'] >= 1
    assert samples['vvtv_autopilot_cycles_total{outcome="RolledBack"}'] >= 1
    assert samples['vvtv_autopilot_gate_decisions_total{recommendation="proceed"}'] >= 1
    assert samples['vvtv_autopilot_samples_ingested_total{arm="canary"}'] > 0
    assert samples["vvtv_autopilot_paused"] == 0 and "vvtv_autopilot_dead_letters_total" in samples
    assert 0 <= samples["vvtv_autopilot_last_cycle_age_seconds"] < 3600
    assert "# TYPE vvtv_autopilot_cycles_total counter" in text


async def test_with_a_token_every_request_needs_it(world):
    web = WebServer(world.service.config, Path(world.data_dir) / "autopilot.db", world.service.status, token="s3cret")
    url = await web.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/") as r:
                assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
            async with http.get(url + "/metrics", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            async with http.get(url + "/metrics", headers={"Authorization": "Bearer s3cret"}) as r:
                assert r.status == 200
            basic = base64.b64encode(b"operator:s3cret").decode()
            async with http.get(url + "/", headers={"Authorization": f"Basic {basic}"}) as r:
                assert r.status == 200 and world.deployed in await r.text()
            async with http.post(url + "/", headers={"Authorization": f"Basic {basic}"}) as r:
                assert r.status == 405    # read-only
    finally:
        await web.stop()


async def test_an_off_loopback_bind_without_credentials_is_refused_at_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VVTV_AUTOPILOT_WEB_TOKEN"}
    code, out, err = await run_cli("run", "--http", "0.0.0.0:0", "--data-dir", str(tmp_path / "d"), env=env)
    assert code == 2, (out, err)
    assert "web.listen = '0.0.0.0:0'" in err and "non-loopback address needs credentials" in err
    assert "VVTV_AUTOPILOT_WEB_TOKEN" in err
    assert not (tmp_path / "d" / "nats").exists()    # refused before anything started
