"""The business-logic card: dotted parameter paths, canonical JSON, version ids.

A parameter name is a dotted path into the card's JSON object
(``selection.diversity_weight`` -> ``{"selection": {"diversity_weight": ...}}``).
A version id is the SHA-256 of the card's canonical JSON (sorted keys, no
whitespace), so the same card always has the same id.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Mapping

_MISSING = object()


def canonical_json(card: Mapping[str, Any]) -> bytes:
    return json.dumps(card, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def version_id(card: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(card)).hexdigest()


def get_path(card: Mapping[str, Any], name: str, default: Any = _MISSING) -> Any:
    node: Any = card
    for key in name.split("."):
        if not isinstance(node, Mapping) or key not in node:
            if default is _MISSING:
                raise KeyError(name)
            return default
        node = node[key]
    return node


def with_values(card: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``card`` with each dotted path set to its value."""
    out = copy.deepcopy(dict(card))
    for name, value in values.items():
        node = out
        keys = name.split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    return out


def parameter_values(card: Mapping[str, Any], names: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The values of the named parameters present in the card."""
    out = {}
    for name in names:
        value = get_path(card, name, None)
        if value is not None:
            out[name] = value
    return out
