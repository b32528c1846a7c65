"""ParameterHistory: stable ids, deploy/rollback round trip, retention, corruption, id checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from vvtv_autopilot.handlers.card import canonical_json, version_id
from vvtv_autopilot.infra import history as history_module
from vvtv_autopilot.infra.history import PRE_DEPLOY_BACKUP, ParameterHistory, check_version_id
from vvtv_autopilot.schemas.errors import (
    CorruptVersion,
    HistoryError,
    InvalidVersionId,
    VerificationFailed,
    VersionNotFound,
)

T0 = datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc)
CARD_A = {"selection": {"diversity_weight": 0.3, "novelty_bonus": 0.1}, "curator": {"budget": 12}}
CARD_B = {"selection": {"diversity_weight": 0.42, "novelty_bonus": 0.1}, "curator": {"budget": 12}}
CHANGE = {"parameter_name": "selection.diversity_weight", "old_value": 0.3, "new_value": 0.42, "change_type": "optimization"}


@pytest.fixture
def hist(tmp_path: Path) -> ParameterHistory:
    return ParameterHistory(tmp_path / "history", tmp_path / "business_logic.json")


def _days(n: float) -> datetime:
    return T0 + timedelta(days=n)


# ------------------------------------------------------------------ ids


def test_version_id_is_sha256_of_canonical_json_and_names_the_file(hist: ParameterHistory) -> None:
    v = hist.store_version(CARD_A, [], "seed", T0)
    assert v.version_id == hashlib.sha256(canonical_json(CARD_A)).hexdigest() == version_id(CARD_A)
    assert v.file_path == hist.history_dir / f"{v.version_id}.json"
    assert hashlib.sha256(v.file_path.read_bytes()).hexdigest() == v.version_id


def test_version_ids_are_stable_across_processes(tmp_path: Path) -> None:
    # Key order and a different process (fresh hash seed) must not change the id.
    shuffled = {"curator": {"budget": 12}, "selection": {"novelty_bonus": 0.1, "diversity_weight": 0.3}}
    script = (
        "import json, sys\n"
        "from datetime import datetime, timezone\n"
        "from vvtv_autopilot.infra.history import ParameterHistory\n"
        "h = ParameterHistory(sys.argv[1], sys.argv[2])\n"
        "v = h.store_version(json.loads(sys.argv[3]), [], 'seed', datetime(2026, 1, 1, tzinfo=timezone.utc))\n"
        "print(v.version_id)\n"
    )
    ids = []
    for i, card in enumerate((CARD_A, shuffled)):
        env = dict(os.environ, PYTHONHASHSEED=str(i + 1))
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"h{i}"), str(tmp_path / f"c{i}.json"), json.dumps(card)],
            check=True, capture_output=True, text=True, env=env, timeout=120,
        )
        ids.append(out.stdout.strip())
    assert ids[0] == ids[1] == version_id(CARD_A)


def test_store_is_idempotent_for_the_same_card(hist: ParameterHistory) -> None:
    first = hist.store_version(CARD_A, [CHANGE], "optimize", T0)
    again = hist.store_version(dict(reversed(list(CARD_A.items()))), [], "other", _days(2))
    assert again.version_id == first.version_id
    assert (again.timestamp, again.changes, again.rationale) == (T0, (CHANGE,), "optimize")
    assert again.touched_at == _days(2)
    assert len(hist.get_version_history()) == 1


# ------------------------------------------------------------------ deploy / rollback


def test_deploy_writes_canonical_card_and_records_metadata(hist: ParameterHistory) -> None:
    v = hist.deploy(CARD_A, [CHANGE], "first", T0)
    assert hist.card_path.read_bytes() == canonical_json(CARD_A)
    assert hist.current_card() == CARD_A and hist.current_version_id() == v.version_id
    got = hist.get_version(v.version_id)
    assert got.changes == (CHANGE,) and got.rationale == "first" and got.timestamp == T0
    meta = json.loads((hist.history_dir / f"{v.version_id}.meta.json").read_text())
    assert meta["timestamp"] == "2026-11-26T03:00:00Z"
    hist.record_deployment_result(v.version_id, {"applied": True, "arm": "live"})
    assert hist.get_version(v.version_id).deployment_result == {"applied": True, "arm": "live"}


def test_rollback_round_trip(hist: ParameterHistory) -> None:
    a = hist.deploy(CARD_A, [], "first", T0)
    b = hist.deploy(CARD_B, [CHANGE], "optimize", _days(1))
    assert hist.current_card() == CARD_B

    back = hist.rollback_to_version(a.version_id, _days(2))
    assert back.version_id == a.version_id
    assert hist.current_card() == CARD_A
    assert hist.card_path.read_bytes() == canonical_json(CARD_A)
    assert hist.get_version(b.version_id).version_id == b.version_id  # the replaced card stays rollbackable

    forward = hist.rollback_to_version(b.version_id, _days(3))
    assert forward.version_id == b.version_id and hist.current_card() == CARD_B
    assert [v.version_id for v in hist.get_version_history()] == [b.version_id, a.version_id]
    assert [v.version_id for v in hist.get_version_history(limit=1)] == [b.version_id]


def test_hand_placed_card_is_backed_up_before_first_deploy(hist: ParameterHistory) -> None:
    hist.card_path.write_text(json.dumps(CARD_A, indent=2))  # not canonical, not in history
    hist.deploy(CARD_B, [CHANGE], "optimize", T0)
    backup = hist.get_version(version_id(CARD_A))
    assert backup.rationale == PRE_DEPLOY_BACKUP
    hist.rollback_to_version(backup.version_id, _days(1))
    assert hist.current_card() == CARD_A


def test_rollback_backs_up_a_live_card_not_in_history(hist: ParameterHistory) -> None:
    a = hist.deploy(CARD_A, [], "first", T0)
    hand_edit = {"selection": {"diversity_weight": 0.55}}
    hist.card_path.write_text(json.dumps(hand_edit))
    hist.rollback_to_version(a.version_id, _days(1))
    backup = hist.get_version(version_id(hand_edit))
    assert backup.rationale == "pre_rollback_backup" and hist.load_card(backup.version_id) == hand_edit


def test_unparsable_live_card_is_quarantined_not_lost(hist: ParameterHistory) -> None:
    a = hist.deploy(CARD_A, [], "first", T0)
    hist.card_path.write_bytes(b'{"selection": ')
    with pytest.raises(HistoryError):
        hist.current_card()
    hist.rollback_to_version(a.version_id, _days(1))
    assert hist.current_card() == CARD_A
    kept = list((hist.history_dir / "quarantine").iterdir())
    assert [p.read_bytes() for p in kept] == [b'{"selection": ']


def test_failed_verification_restores_the_previous_card(hist: ParameterHistory, monkeypatch) -> None:
    a = hist.deploy(CARD_A, [], "first", T0)
    b = hist.deploy(CARD_B, [], "second", _days(1))
    real_write = history_module.atomic_write_bytes
    calls = []

    def garbling_write(path: Path, data: bytes) -> None:
        # The first write of the live card lands wrong (a disk or another writer); the restore is real.
        if Path(path) == hist.card_path and not calls:
            calls.append(path)
            data = data.replace(b"0.3", b"0.9")
        real_write(path, data)

    monkeypatch.setattr(history_module, "atomic_write_bytes", garbling_write)
    with pytest.raises(VerificationFailed, match="previous card was restored"):
        hist.rollback_to_version(a.version_id, _days(2))
    assert hist.current_version_id() == b.version_id
    assert hist.card_path.read_bytes() == canonical_json(CARD_B)


def test_validator_refuses_invalid_target_before_anything_changes(tmp_path: Path) -> None:
    def validate(card: dict) -> None:
        if not 0.1 <= card["selection"]["diversity_weight"] <= 0.4:
            raise ValueError("selection.diversity_weight out of range")

    hist = ParameterHistory(tmp_path / "h", tmp_path / "card.json", validate_card=validate)
    a = hist.deploy(CARD_A, [], "first", T0)
    bad = hist.store_version({"selection": {"diversity_weight": 0.9}}, [], "imported", T0)
    with pytest.raises(HistoryError, match="out of range"):
        hist.rollback_to_version(bad.version_id, _days(1))
    with pytest.raises(HistoryError, match="out of range"):
        hist.deploy({"selection": {"diversity_weight": 0.9}}, [], "bad", _days(1))
    assert hist.current_version_id() == a.version_id


def test_cards_that_are_not_json_objects_are_refused(hist: ParameterHistory) -> None:
    with pytest.raises(HistoryError):
        hist.deploy([1, 2], [], "list", T0)  # type: ignore[arg-type]
    with pytest.raises(HistoryError):
        hist.deploy({"x": float("nan")}, [], "nan", T0)
    assert not hist.card_path.exists()


def test_naive_times_are_refused(hist: ParameterHistory) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        hist.deploy(CARD_A, [], "naive", datetime(2026, 1, 1))


# ------------------------------------------------------------------ corruption


def test_corrupt_version_is_reported_and_never_used(hist: ParameterHistory) -> None:
    a = hist.deploy(CARD_A, [], "first", T0)
    b = hist.deploy(CARD_B, [], "second", _days(1))
    tampered = dict(CARD_A, curator={"budget": 999})
    a.file_path.write_bytes(canonical_json(tampered))  # content no longer hashes to the name

    with pytest.raises(CorruptVersion, match="hashes to"):
        hist.get_version(a.version_id)
    with pytest.raises(CorruptVersion):
        hist.rollback_to_version(a.version_id, _days(2))
    assert hist.card_path.read_bytes() == canonical_json(CARD_B)  # untouched
    assert [vid for vid, _ in hist.corrupt_versions()] == [a.version_id]
    assert [v.version_id for v in hist.get_version_history()] == [b.version_id]
    with pytest.raises(CorruptVersion):
        hist.mark_known_good(a.version_id)


def test_corrupt_version_is_repaired_by_storing_the_same_card(hist: ParameterHistory) -> None:
    a = hist.store_version(CARD_A, [], "first", T0)
    a.file_path.write_bytes(b"{}")
    hist.store_version(CARD_A, [], "again", _days(1))
    assert hist.load_card(a.version_id) == CARD_A and hist.corrupt_versions() == []


def test_missing_card_file_and_unreadable_metadata_are_corrupt(hist: ParameterHistory) -> None:
    a = hist.store_version(CARD_A, [], "first", T0)
    b = hist.store_version(CARD_B, [], "second", T0)
    a.file_path.unlink()
    (hist.history_dir / f"{b.version_id}.meta.json").write_text("{not json")
    reasons = dict(hist.corrupt_versions())
    assert "missing" in reasons[a.version_id] and "metadata" in reasons[b.version_id]


def test_interrupted_store_is_not_a_version(hist: ParameterHistory) -> None:
    a = hist.store_version(CARD_A, [], "first", T0)
    (hist.history_dir / f"{a.version_id}.meta.json").unlink()  # as if killed between card and metadata
    with pytest.raises(VersionNotFound, match="never completely stored"):
        hist.get_version(a.version_id)
    assert hist.get_version_history() == [] and hist.corrupt_versions() == []


# ------------------------------------------------------------------ version ids refused


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "A" * 64,  # upper case
        "g" * 64,
        "0" * 63,
        "0" * 65,
        "../" + "0" * 61,
        "0" * 64 + "\n",
        "/etc/passwd",
        None,
        123,
    ],
)
def test_malformed_version_ids_are_refused_before_the_file_system(hist: ParameterHistory, bad, monkeypatch) -> None:
    def no_io(*args, **kwargs):
        raise AssertionError("file system touched for a malformed id")

    monkeypatch.setattr(history_module, "_read_bytes", no_io)
    monkeypatch.setattr(history_module.os, "listdir", no_io)
    for call in (
        lambda: hist.get_version(bad),
        lambda: hist.load_card(bad),
        lambda: hist.rollback_to_version(bad, T0),
        lambda: hist.mark_known_good(bad),
        lambda: hist.record_deployment_result(bad, {}),
        lambda: check_version_id(bad),
    ):
        with pytest.raises(InvalidVersionId, match="64 lowercase hex"):
            call()
    assert issubclass(InvalidVersionId, VersionNotFound)
    assert not hist.history_dir.exists()


def test_unknown_well_formed_id_is_not_found(hist: ParameterHistory) -> None:
    hist.deploy(CARD_A, [], "first", T0)
    with pytest.raises(VersionNotFound, match="no stored version"):
        hist.rollback_to_version("0" * 64, T0)
    assert hist.current_card() == CARD_A


# ------------------------------------------------------------------ retention


def test_retention_keeps_current_and_last_known_good(hist: ParameterHistory) -> None:
    cards = [{"selection": {"diversity_weight": round(0.1 + i / 100, 2)}} for i in range(5)]
    versions = [hist.deploy(card, [], f"day {i}", _days(i)) for i, card in enumerate(cards)]
    hist.mark_known_good(versions[1].version_id)
    hist.rollback_to_version(versions[0].version_id, _days(5))  # oldest is live again (touched at day 5)
    hist.deploy(cards[2], [], "redeploy", _days(6))  # touched again: stays

    removed = hist.cleanup_old_versions(30, now=_days(400))
    # 0, 3 and 4 were last touched by day 6: old, and neither live nor known-good
    assert removed == 3
    left = {v.version_id for v in hist.get_version_history()}
    assert left == {versions[2].version_id, versions[1].version_id}
    assert hist.current_version_id() == versions[2].version_id
    assert hist.last_known_good() == versions[1].version_id


def test_retention_keeps_recent_versions(hist: ParameterHistory) -> None:
    a = hist.deploy(CARD_A, [], "first", T0)
    hist.deploy(CARD_B, [], "second", _days(10))
    assert hist.cleanup_old_versions(30, now=_days(20)) == 0
    assert hist.cleanup_old_versions(5, now=_days(20)) == 1
    with pytest.raises(VersionNotFound):
        hist.get_version(a.version_id)


def test_retention_counts_from_the_last_time_a_version_was_live(hist: ParameterHistory) -> None:
    a = hist.deploy(CARD_A, [], "first", T0)
    hist.deploy(CARD_B, [], "second", _days(1))
    hist.rollback_to_version(a.version_id, _days(40))
    hist.deploy(CARD_B, [], "again", _days(41))  # A is backed up (touched) on its way out
    assert hist.cleanup_old_versions(30, now=_days(50)) == 0
    assert hist.get_version(a.version_id).timestamp == T0


def test_cleanup_removes_leftovers_of_killed_writes(hist: ParameterHistory) -> None:
    a = hist.deploy(CARD_A, [], "first", T0)
    (hist.card_path.parent / f".{hist.card_path.name}.4242.tmp").write_bytes(b'{"half')
    (hist.history_dir / f".{a.version_id}.meta.json.4242.tmp").write_bytes(b"{")
    orphan = hist.history_dir / f"{version_id(CARD_B)}.json"
    orphan.write_bytes(canonical_json(CARD_B))
    os.utime(orphan, (0, 0))
    unrelated = hist.card_path.parent / "notes.tmp"
    unrelated.write_text("not ours")
    assert hist.cleanup_old_versions(30, now=_days(1)) == 0
    names = sorted(p.name for p in hist.history_dir.iterdir()) + sorted(p.name for p in hist.card_path.parent.iterdir())
    assert not any(n.endswith(".4242.tmp") for n in names)
    assert not orphan.exists() and unrelated.exists()
    assert hist.current_card() == CARD_A


def test_retention_argument_is_checked(hist: ParameterHistory) -> None:
    with pytest.raises(ValueError):
        hist.cleanup_old_versions(-1, now=T0)
    with pytest.raises(ValueError):
        hist.cleanup_old_versions(30, now=datetime(2026, 1, 1))


def test_to_dict_is_json_ready(hist: ParameterHistory) -> None:
    v = hist.deploy(CARD_A, [CHANGE], "first", T0)
    assert json.loads(json.dumps(v.to_dict()))["timestamp"] == "2026-11-26T03:00:00Z"


def test_seed_parameter_change_structs_are_stored_as_json(hist: ParameterHistory) -> None:
    from vvtv_autopilot.handlers.changes import ChangeType, manual_change

    change = manual_change("selection.diversity_weight", 0.3, 0.42, ChangeType.ROLLBACK)
    v = hist.deploy(CARD_B, [change], "operator rollback", T0)
    (stored,) = hist.get_version(v.version_id).changes
    assert stored["parameter_name"] == "selection.diversity_weight" and stored["change_type"] == "rollback"
    assert stored["expected_impact"]["model"] == "manual"
