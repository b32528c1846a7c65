"""Built-in golden-set evaluator (for installations without the P7 service).

A golden set is a JSON document::

    {"version": 1,
     "catalogue": [{"id": "a", "genre": "news", "quality": 0.9, "novelty": 0.2, "blocked": false}, ...],
     "cases": [ {"name": ..., "kind": ..., ...}, ... ]}

Case kinds (a parameter name is a flat key of ``parameters`` or a dotted path into it;
wherever a number is expected, ``{"param": NAME, "default": X}`` or a bare parameter name
string may be given instead):

* ``range``: ``parameter``, optional ``min`` / ``max`` (inclusive).
* ``ordering``: ``lesser``, ``greater`` (numbers or parameters), optional ``strict``.
* ``sum``: ``parameters`` (list), optional ``equals`` (+ ``tolerance``, default 1e-9), ``min``, ``max``.
* ``selection``: picks ``slots`` items from the catalogue greedily: each step takes the
  unblocked item with the highest ``sum(weight * item[feature] for feature, weight in score)
  - diversity_penalty * (items already picked with the same ``diversity_field``)``; ties by id.
  Expectations: ``expect_included`` (ids), ``expect_excluded`` (ids), ``expect_first`` (id),
  ``min_distinct`` (distinct values of ``diversity_field`` among the picks).

Every case also accepts ``optional: true``: skipped (not run) when a parameter it needs is
missing. A missing parameter otherwise fails the case. :func:`evaluate_golden` is pure.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any, Mapping

import msgspec

from ..schemas.messages import GoldenFailure, GoldenReply

_MISSING = object()


class GoldenSet(msgspec.Struct, frozen=True):
    cases: list[dict[str, Any]]
    catalogue: list[dict[str, Any]] = []
    version: int = 1


class _Missing(Exception):
    pass


def parse_golden_set(data: bytes | str | Mapping[str, Any]) -> GoldenSet:
    """Validate a golden-set document (bytes/str JSON, or an already parsed mapping)."""
    raw = json.loads(data) if isinstance(data, (bytes, str)) else dict(data)
    gs = msgspec.convert(raw, GoldenSet)
    names = set()
    for i, case in enumerate(gs.cases):
        name = case.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"case #{i} has no name")
        if name in names:
            raise ValueError(f"case name {name!r} is used twice")
        names.add(name)
        if case.get("kind") not in ("range", "ordering", "sum", "selection"):
            raise ValueError(f"case {name!r}: unknown kind {case.get('kind')!r}")
    ids = [item.get("id") for item in gs.catalogue]
    if len(set(ids)) != len(ids) or any(not isinstance(i, str) for i in ids):
        raise ValueError("catalogue items need unique string ids")
    return gs


def builtin_golden_set() -> GoldenSet:
    """The golden set shipped with the package (``handlers/golden_cases.json``)."""
    text = resources.files(__package__).joinpath("golden_cases.json").read_bytes()
    return parse_golden_set(text)


def _lookup(parameters: Mapping[str, Any], name: str) -> Any:
    if name in parameters:
        return parameters[name]
    node: Any = parameters
    for key in name.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _num(parameters: Mapping[str, Any], spec: Any) -> float:
    if isinstance(spec, bool):
        raise ValueError(f"{spec!r} is not a number")
    if isinstance(spec, (int, float)):
        return float(spec)
    default = _MISSING
    if isinstance(spec, Mapping):
        default = spec.get("default", _MISSING)
        spec = spec["param"]
    value = _lookup(parameters, spec)
    if value is _MISSING:
        if default is _MISSING:
            raise _Missing(f"parameter {spec} is missing")
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"parameter {spec} = {value!r} is not a finite number")
    return float(value)


def _g(x: float) -> str:
    return f"{x:.6g}"


def _check_range(case, p) -> str | None:
    v = _num(p, case["parameter"])
    if "min" in case and v < _num(p, case["min"]):
        return f"{case['parameter']} = {_g(v)} is below {_g(_num(p, case['min']))}"
    if "max" in case and v > _num(p, case["max"]):
        return f"{case['parameter']} = {_g(v)} is above {_g(_num(p, case['max']))}"
    return None


def _check_ordering(case, p) -> str | None:
    a, b = _num(p, case["lesser"]), _num(p, case["greater"])
    if case.get("strict", False) and not a < b:
        return f"{case['lesser']} = {_g(a)} must be below {case['greater']} = {_g(b)}"
    if not a <= b:
        return f"{case['lesser']} = {_g(a)} must not exceed {case['greater']} = {_g(b)}"
    return None


def _check_sum(case, p) -> str | None:
    total = math.fsum(_num(p, name) for name in case["parameters"])
    label = " + ".join(case["parameters"])
    if "equals" in case:
        want, tol = _num(p, case["equals"]), float(case.get("tolerance", 1e-9))
        if abs(total - want) > tol:
            return f"{label} = {_g(total)}, expected {_g(want)} ± {tol:g}"
    if "min" in case and total < _num(p, case["min"]):
        return f"{label} = {_g(total)} is below {_g(_num(p, case['min']))}"
    if "max" in case and total > _num(p, case["max"]):
        return f"{label} = {_g(total)} is above {_g(_num(p, case['max']))}"
    return None


def select(catalogue: list[Mapping[str, Any]], parameters: Mapping[str, Any], case: Mapping[str, Any]) -> list[str]:
    """The ids a ``selection`` case picks, in order."""
    weights = {feature: _num(parameters, w) for feature, w in case.get("score", {}).items()}
    penalty = _num(parameters, case.get("diversity_penalty", 0.0))
    field = case.get("diversity_field", "genre")
    pool = [item for item in catalogue if not item.get("blocked", False)]
    picked: list[Mapping[str, Any]] = []
    for _ in range(int(case.get("slots", 1))):
        if not pool:
            break

        def score(item):
            base = sum(w * float(item.get(f, 0.0)) for f, w in weights.items())
            same = sum(1 for q in picked if q.get(field) == item.get(field))
            return base - penalty * same

        best = max(pool, key=lambda item: (round(score(item), 12), [-ord(ch) for ch in item["id"]]))
        picked.append(best)
        pool.remove(best)
    return [item["id"] for item in picked]


def _check_selection(case, p, catalogue) -> str | None:
    ids = select(catalogue, p, case)
    problems = []
    missing = [i for i in case.get("expect_included", []) if i not in ids]
    if missing:
        problems.append(f"expected {missing} among the picks")
    unwanted = [i for i in case.get("expect_excluded", []) if i in ids]
    if unwanted:
        problems.append(f"did not expect {unwanted} among the picks")
    if "expect_first" in case and (not ids or ids[0] != case["expect_first"]):
        problems.append(f"expected {case['expect_first']!r} first, got {ids[0] if ids else None!r}")
    if "min_distinct" in case:
        field = case.get("diversity_field", "genre")
        by_id = {item["id"]: item for item in catalogue}
        distinct = len({by_id[i].get(field) for i in ids})
        if distinct < int(case["min_distinct"]):
            problems.append(f"{distinct} distinct {field} values, expected at least {case['min_distinct']}")
    if problems:
        return "; ".join(problems) + f" (picked {ids})"
    return None


def evaluate_golden(golden: GoldenSet, parameters: Mapping[str, Any]) -> GoldenReply:
    """Run every case against ``parameters`` (flat dotted names, or the card itself).
    The reply has the shape of a ``golden.validate`` reply (README, "The bus"); ``cases_run``
    excludes skipped optional cases."""
    failures: list[GoldenFailure] = []
    run = 0
    for case in golden.cases:
        name = case["name"]
        try:
            kind = case["kind"]
            if kind == "range":
                problem = _check_range(case, parameters)
            elif kind == "ordering":
                problem = _check_ordering(case, parameters)
            elif kind == "sum":
                problem = _check_sum(case, parameters)
            else:
                problem = _check_selection(case, parameters, golden.catalogue)
        except _Missing as exc:
            if case.get("optional", False):
                continue
            problem = str(exc)
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"case cannot be evaluated: {exc}"
        run += 1
        if problem is not None:
            failures.append(GoldenFailure(case=name, reason=problem))
    return GoldenReply(passed=not failures, cases_run=run, failures=failures)
