"""The cycle as an explicit `transitions` state machine, and the pure step
``inbound event -> (transitions, effects, reply)`` around it."""

from .autopilot import Autopilot, AutopilotState
from .bounds_keeper import BoundsKeeper, TuningState
from .cycle import Cycle, CycleData
from .definition import MACHINE_HASH, STATES, TERMINAL, TRANSITIONS
from .drift_monitor import DriftMonitor, MonitorState
from .step import Step

__all__ = ["Autopilot", "AutopilotState", "BoundsKeeper", "TuningState", "DriftMonitor", "MonitorState", "Cycle",
           "CycleData", "Step", "MACHINE_HASH", "STATES", "TERMINAL", "TRANSITIONS"]
