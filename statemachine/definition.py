"""The cycle's states and designed transitions, and the hash that names them.

``Analyzing -> Bounded -> Validated -> Canary -> Gated -> Deployed | RolledBack``
is the design's path; ``Pending`` (before the start), ``NoChange``,
``Aborted`` (cancelled by an operator before a canary ran) and ``Failed``
(a fail-safe fired) are ours. ``auto_transitions=False``: nothing else exists.
"""

from __future__ import annotations

import hashlib
import json

STATES = [
    "Pending",
    "Analyzing",
    "Bounded",
    "Validated",
    "Canary",
    "Gated",
    "Deployed",
    "RolledBack",
    "NoChange",
    "Aborted",
    "Failed",
]

TERMINAL = frozenset({"Deployed", "RolledBack", "NoChange", "Aborted", "Failed"})

# The seed's autopilot_cycles.status for each final state ('running' before).
OUTCOME_STATUS = {
    "Deployed": "completed",
    "NoChange": "completed",
    "RolledBack": "rolled_back",
    "Failed": "failed",
    "Aborted": "failed",
}

# Stages in which the cycle does active work (counted against
# max_execution_time_minutes); Canary is waiting for traffic, not work.
ACTIVE = frozenset({"Analyzing", "Bounded", "Validated", "Gated"})

TRANSITIONS = [
    {"trigger": "start", "source": "Pending", "dest": "Analyzing"},
    {"trigger": "bounds_ok", "source": "Analyzing", "dest": "Bounded"},
    {"trigger": "no_change", "source": "Analyzing", "dest": "NoChange"},
    {"trigger": "golden_passed", "source": "Bounded", "dest": "Validated"},
    {"trigger": "golden_failed", "source": "Bounded", "dest": "Failed"},
    {"trigger": "canary_started", "source": "Validated", "dest": "Canary"},
    {"trigger": "underpowered", "source": "Validated", "dest": "NoChange"},
    {"trigger": "canary_apply_failed", "source": "Validated", "dest": "Failed"},
    {"trigger": "extend", "source": "Canary", "dest": "Canary"},
    {"trigger": "judge", "source": "Canary", "dest": "Gated"},
    {"trigger": "deployed", "source": "Gated", "dest": "Deployed"},
    {"trigger": "rolled_back", "source": "Gated", "dest": "RolledBack"},
    {"trigger": "cancel", "source": ["Analyzing", "Bounded", "Validated"], "dest": "Aborted"},
    {"trigger": "fail", "source": ["Analyzing", "Bounded", "Validated", "Canary", "Gated"], "dest": "Failed"},
]

MACHINE_HASH = hashlib.sha256(
    json.dumps({"states": STATES, "transitions": TRANSITIONS}, sort_keys=True).encode()
).hexdigest()[:16]
"""Stored in every transition record, so a replay can tell when the
definition changed between recording and review."""

INITIAL = STATES[0]
"""Every cycle's machine starts here (``Cycle`` restores others with ``initial=``)."""

MOVES: dict[tuple[str, str], str] = {
    (t["trigger"], source): t["dest"]
    for t in TRANSITIONS
    for source in ([t["source"]] if isinstance(t["source"], str) else t["source"])
}
"""``(trigger, source) -> dest``: the legal moves of :data:`TRANSITIONS`, once, as a table
(what the ``transitions`` machine allows with ``auto_transitions=False``; the log replay
checks recorded transitions against it without building a machine per cycle)."""
