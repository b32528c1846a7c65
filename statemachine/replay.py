"""Deterministic replay of a cycle for incident review (Temporal is the model).

Given the autopilot's state just before the event that started the cycle,
the configuration it ran under and the inbox from that event on, the pure
core must produce the very transitions that were recorded.
"""

from __future__ import annotations

from typing import Iterable

import msgspec

from ..handlers.golden import GoldenSet
from ..schemas.config import Config
from ..schemas.errors import ReplayMismatch
from ..schemas.events import Inbound, TransitionRecord
from .autopilot import Autopilot, AutopilotState
from .definition import TERMINAL


def replay_cycle(config: Config, state_before: bytes, inbounds: Iterable[Inbound], cycle_id: str, *,
                 golden: GoldenSet | None = None) -> list[TransitionRecord]:
    """``golden`` is the built-in golden set the cycle ran with (``golden.mode:
    builtin``); in service mode its answers are in the inbox instead."""
    core = Autopilot(config, msgspec.json.decode(state_before, type=AutopilotState), golden=golden)
    out: list[TransitionRecord] = []
    for inbound in inbounds:
        step = core.handle(inbound)
        out.extend(t for t in step.transitions if t.cycle_id == cycle_id)
        if out and out[-1].to in TERMINAL:
            break
    return out


def verify(recorded: list[TransitionRecord], replayed: list[TransitionRecord], cycle_id: str) -> None:
    """Raise :class:`ReplayMismatch` unless the replay is exact."""
    problems = compare(recorded, replayed)
    if problems:
        raise ReplayMismatch(cycle_id, problems)


def compare(recorded: list[TransitionRecord], replayed: list[TransitionRecord]) -> list[str]:
    """Human-readable differences; empty when the replay is exact."""
    problems = []
    for i in range(max(len(recorded), len(replayed))):
        a = recorded[i] if i < len(recorded) else None
        b = replayed[i] if i < len(replayed) else None
        if a is None or b is None:
            problems.append(f"seq {i + 1}: recorded {a and (a.from_, a.to)} but replay gave {b and (b.from_, b.to)}")
        elif _plain(a) != _plain(b):
            fields = [f for f in ("from_", "to", "trigger", "at", "cause", "detail", "machine")
                      if _plain(getattr(a, f)) != _plain(getattr(b, f))]
            problems.append(f"seq {a.seq}: differs in {', '.join(fields)}")
    return problems


def _plain(value):
    """As it would read back from the store (tuples become lists, and so on)."""
    return msgspec.json.decode(msgspec.json.encode(value))
