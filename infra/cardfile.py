"""The live business-logic card as the service sees it, over ParameterHistory.

Deploys are idempotent (an outbox effect re-run after a crash finds the card
already in place and does nothing), and the first start of an installation
without a card writes one with every tunable parameter at its range's middle.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from ..handlers.card import get_path, version_id, with_values
from ..schemas.config import Config
from .clock import now
from .history import ParameterHistory

log = logging.getLogger("vvtv_autopilot.card")


class CardFile:
    def __init__(self, card_path: Path, history_dir: Path):
        self.history = ParameterHistory(history_dir, card_path)

    def load_or_init(self, config: Config) -> dict[str, Any]:
        card = self.history.current_card()
        if card is None:
            card = with_values({}, {name: round((spec.min + spec.max) / 2, 6) for name, spec in config.parameters.items()})
            log.warning("no business-logic card at %s: writing one with every parameter at mid-range", self.history.card_path)
            self.history.deploy(card, [], "initial card: parameters at mid-range", now())
        else:
            missing = [name for name in config.parameters if get_path(card, name, None) is None]
            if missing:
                log.warning("card lacks configured parameters %s; they are added at mid-range on the next deploy", missing)
        return card

    def deploy(self, card: dict[str, Any], vid: str, *, changes: Sequence[Any], rationale: str) -> None:
        if self.history.current_version_id() == vid:
            return
        if version_id(card) != vid:
            raise ValueError(f"card does not hash to its version id {vid}")
        self.history.deploy(card, changes, rationale, now())
        self.history.mark_known_good(vid)

    def rollback_to(self, vid: str, *, reason: str) -> dict[str, Any]:
        self.history.rollback_to_version(vid, now())
        return self.history.load_card(vid)
