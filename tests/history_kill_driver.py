"""Crash-test driver: run one deployment or rollback and SIGKILL itself at a named point.

    python history_kill_driver.py WORKDIR SCENARIO

SCENARIO is ``deploy`` (deploy CARD_NEW over the live CARD_OLD), ``rollback``
(roll back from the live CARD_NEW to the stored CARD_OLD) or ``first-deploy``
(deploy CARD_NEW over a hand-placed CARD_OLD that is not in the history yet).
The test prepares WORKDIR; this script performs only the action.

``HISTORY_KILL_AT=<point>[@<n>]`` kills the process at the n-th (default first)
time it reaches ``<point>``:

- ``trace:<step>``: a step of ParameterHistory (``deploy.begin``, ``store.card_written``, ...);
- ``<file>.<event>``, where ``<file>`` is ``card`` (the live card), ``hcard``
  (a card file in the history) or ``meta`` (a metadata file), and ``<event>`` is
  ``half_written`` (half the temp file written, then killed), ``written`` (temp
  file whole, before its fsync), ``fsynced`` (before the rename), ``renamed``
  (before the folder fsync) or ``dir_fsynced`` (after the folder fsync).

The file events are injected by wrapping ``os.open/write/fsync/replace``, which
``infra/atomicfile.py`` calls, so the code under test is the production code.
Exit status 0 means the point was never reached.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from vvtv_autopilot.handlers.card import version_id
from vvtv_autopilot.infra.history import ParameterHistory

AT = datetime(2026, 11, 27, 3, 0, tzinfo=timezone.utc)

CARD_OLD = {"selection": {"diversity_weight": 0.3, "novelty_bonus": 0.1}, "curator": {"budget": 12}}
# Large (about 0.5 MB) so a torn write would be visible as a truncated card.
CARD_NEW = {
    "selection": {"diversity_weight": 0.45, "novelty_bonus": 0.1},
    "curator": {"budget": 14},
    "catalog": {f"item_{i:05d}": {"weight": i / 8_000, "tags": ["music", "talk", f"t{i % 97}"]} for i in range(8_000)},
}


def paths(workdir: Path) -> tuple[Path, Path]:
    return workdir / "history", workdir / "business_logic.json"


class KillSwitch:
    """Counts named points and SIGKILLs the process at the chosen occurrence."""

    def __init__(self, spec: str):
        name, _, nth = spec.partition("@")
        self.name = name
        self.nth = int(nth or 1)
        self.seen: Counter[str] = Counter()

    def hit(self, point: str) -> bool:
        if point != self.name:
            return False
        self.seen[point] += 1
        return self.seen[point] == self.nth

    def at(self, point: str) -> None:
        if self.hit(point):
            die()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_file_hooks(switch: KillSwitch, history_dir: Path, card_path: Path) -> None:
    card_tmp = re.compile(re.escape(f".{card_path.name}.") + r"\d+\.tmp")
    hcard_tmp = re.compile(r"\.[0-9a-f]{64}\.json\.\d+\.tmp")
    meta_tmp = re.compile(r"\.[0-9a-f]{64}\.meta\.json\.\d+\.tmp")
    dirs = {str(card_path.parent.resolve()): "carddir", str(history_dir.resolve()): "histdir"}
    fd_kind: dict[int, str] = {}
    last_renamed: list[str] = []  # which kind of file the next folder fsync makes durable

    def kind_of(path: str) -> str | None:
        name = os.path.basename(path)
        for kind, pattern in (("card", card_tmp), ("hcard", hcard_tmp), ("meta", meta_tmp)):
            if pattern.fullmatch(name):
                return kind
        return dirs.get(os.path.abspath(path))

    real_open, real_write, real_fsync, real_replace, real_close = os.open, os.write, os.fsync, os.replace, os.close

    def open_(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        kind = kind_of(os.fspath(path))
        if kind:
            fd_kind[fd] = kind
        return fd

    def write(fd, data):
        kind = fd_kind.get(fd)
        if kind in ("card", "hcard", "meta") and switch.hit(f"{kind}.half_written"):
            real_write(fd, bytes(data[: len(data) // 2]))
            die()
        return real_write(fd, data)

    def fsync(fd):
        kind = fd_kind.get(fd)
        if kind in ("card", "hcard", "meta"):
            switch.at(f"{kind}.written")
            real_fsync(fd)
            switch.at(f"{kind}.fsynced")
            return
        real_fsync(fd)
        if kind in ("carddir", "histdir") and last_renamed:
            switch.at(f"{last_renamed.pop()}.dir_fsynced")

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        kind = kind_of(os.fspath(src))
        if kind:
            last_renamed[:] = [kind]
            switch.at(f"{kind}.renamed")

    def close(fd):
        fd_kind.pop(fd, None)
        return real_close(fd)

    os.open, os.write, os.fsync, os.replace, os.close = open_, write, fsync, replace, close


def main(argv: list[str]) -> int:
    workdir, scenario = Path(argv[1]), argv[2]
    history_dir, card_path = paths(workdir)
    switch = KillSwitch(os.environ.get("HISTORY_KILL_AT", ""))
    install_file_hooks(switch, history_dir, card_path)
    history = ParameterHistory(history_dir, card_path, trace=lambda step: switch.at(f"trace:{step}"))
    perform(history, scenario)
    return 0


def perform(history: ParameterHistory, scenario: str) -> None:
    """The action of ``scenario`` (also run in-process by the test to show recovery)."""
    if scenario in ("deploy", "first-deploy"):
        history.deploy(CARD_NEW, [{"parameter_name": "selection.diversity_weight"}], "kill test", AT)
    elif scenario == "rollback":
        history.rollback_to_version(version_id(CARD_OLD), AT)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
