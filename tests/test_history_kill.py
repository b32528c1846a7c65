"""SIGKILL a real deployment or rollback at many points: the live card is always whole, old or new.

Each case prepares a folder, runs ``history_kill_driver.py`` in a subprocess that
kills itself at one named point, checks what is on disk, then checks that the
history recovers: no corrupt version, and the same action run again succeeds.
Run with ``-s`` to see one line per kill point describing what was on disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from vvtv_autopilot.handlers.card import canonical_json, version_id
from vvtv_autopilot.infra.history import ParameterHistory

DRIVER_PATH = Path(__file__).with_name("history_kill_driver.py")
_spec = importlib.util.spec_from_file_location("history_kill_driver", DRIVER_PATH)
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)

BEFORE = datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc)
OLD, NEW = "old", "new"

# (scenario, kill point, what must be live afterwards). "old"/"new" are the live
# card before/after the action: CARD_OLD -> CARD_NEW for deploys, back for rollbacks.
CASES = [
    ("deploy", "trace:deploy.begin", OLD),
    ("deploy", "meta.half_written@1", OLD),  # touching the live card's backup metadata
    ("deploy", "trace:deploy.backed_up", OLD),
    ("deploy", "hcard.half_written", OLD),  # new card's history file half written
    ("deploy", "hcard.renamed", OLD),  # history card in place, metadata not yet: incomplete store
    ("deploy", "meta.half_written@2", OLD),  # new version's metadata half written
    ("deploy", "trace:deploy.stored", OLD),
    ("deploy", "card.half_written", OLD),  # 0.5 MB live card half written to its temp file
    ("deploy", "card.written", OLD),  # temp file whole, not yet fsynced
    ("deploy", "card.fsynced", OLD),  # fsynced, not yet renamed
    ("deploy", "card.renamed", NEW),  # renamed, folder not yet fsynced
    ("deploy", "card.dir_fsynced", NEW),  # durable, not yet re-read
    ("deploy", "trace:deploy.verified", NEW),
    ("rollback", "trace:rollback.begin", OLD),
    ("rollback", "trace:rollback.validated", OLD),
    ("rollback", "meta.half_written@1", OLD),  # pre-rollback backup metadata half written
    ("rollback", "trace:rollback.backed_up", OLD),
    ("rollback", "card.half_written", OLD),
    ("rollback", "card.fsynced", OLD),
    ("rollback", "card.renamed", NEW),
    ("rollback", "card.dir_fsynced", NEW),
    ("rollback", "meta.half_written@2", NEW),  # touching the target's metadata after the swap
    ("rollback", "trace:rollback.verified", NEW),
    ("first-deploy", "hcard.half_written@1", OLD),  # backup of the hand-placed card half written
    ("first-deploy", "meta.half_written@1", OLD),
    ("first-deploy", "card.renamed", NEW),
]


def _prepare(workdir: Path, scenario: str) -> tuple[bytes, bytes]:
    """Set up the folder; return (bytes live before, canonical bytes expected after)."""
    history_dir, card_path = driver.paths(workdir)
    history = ParameterHistory(history_dir, card_path)
    if scenario == "deploy":
        history.deploy(driver.CARD_OLD, [], "initial", BEFORE)
        return card_path.read_bytes(), canonical_json(driver.CARD_NEW)
    if scenario == "rollback":
        history.deploy(driver.CARD_OLD, [], "initial", BEFORE)
        history.deploy(driver.CARD_NEW, [], "optimize", BEFORE)
        return card_path.read_bytes(), canonical_json(driver.CARD_OLD)
    if scenario == "first-deploy":
        card_path.parent.mkdir(parents=True, exist_ok=True)
        card_path.write_text(json.dumps(driver.CARD_OLD, indent=2))  # hand-placed, not canonical
        return card_path.read_bytes(), canonical_json(driver.CARD_NEW)
    raise AssertionError(scenario)


def _run_driver(workdir: Path, scenario: str, kill_at: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HISTORY_KILL_AT=kill_at)
    return subprocess.run(
        [sys.executable, str(DRIVER_PATH), str(workdir), scenario],
        env=env, capture_output=True, text=True, timeout=120,
    )


def _leftovers(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*.tmp"))


@pytest.mark.parametrize("scenario, kill_at, expected", CASES, ids=[f"{s}@{p}" for s, p, _ in CASES])
def test_sigkill_leaves_a_whole_card(tmp_path: Path, scenario: str, kill_at: str, expected: str) -> None:
    old_bytes, new_bytes = _prepare(tmp_path, scenario)
    proc = _run_driver(tmp_path, scenario, kill_at)
    assert proc.returncode == -signal.SIGKILL, f"kill point {kill_at} never reached (rc={proc.returncode}): {proc.stderr}"

    history_dir, card_path = driver.paths(tmp_path)
    on_disk = card_path.read_bytes()
    assert on_disk in (old_bytes, new_bytes), "the live card is neither the old nor the new card, whole"
    found = OLD if on_disk == old_bytes else NEW
    card = json.loads(on_disk)
    assert isinstance(card, dict)
    print(
        f"\nKILL {scenario}@{kill_at}: live card = {found} ({len(on_disk)} bytes, "
        f"sha256 {hashlib.sha256(on_disk).hexdigest()[:12]}), leftovers {_leftovers(tmp_path)}"
    )
    assert found == expected

    # The history is still sound: no file under a final name is torn.
    history = ParameterHistory(history_dir, card_path)
    assert history.corrupt_versions() == []

    # And it recovers: the same action run again succeeds, the old card stays reachable.
    driver.perform(history, scenario)
    assert card_path.read_bytes() == new_bytes
    assert history.current_version_id() == hashlib.sha256(new_bytes).hexdigest()
    assert history.load_card(version_id(json.loads(old_bytes))) == json.loads(old_bytes)
    history.cleanup_old_versions(365, now=datetime(2027, 1, 1, tzinfo=timezone.utc))
    assert _leftovers(tmp_path) == []


def test_driver_without_kill_point_completes(tmp_path: Path) -> None:
    _, new_bytes = _prepare(tmp_path, "deploy")
    assert _run_driver(tmp_path, "deploy", "").returncode == 0
    assert driver.paths(tmp_path)[1].read_bytes() == new_bytes


def test_enough_distinct_kill_points() -> None:
    assert len({(s, p) for s, p, _ in CASES}) >= 10
    assert len({p.split("@")[0] for _, p, _ in CASES}) >= 10
