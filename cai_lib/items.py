"""Eval items: load and validate the item schema of DESIGN.md ("Eval item"), and draw
type-balanced samples of them.

An item is `{"id", "type", "instruction", "checks"}`; every problem in an items file is
reported as one line naming the file, line, field and the fix, before any model time
is spent on it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from .errors import CaiError
from .checks import validate_checks
from .scoring import read_records

VALID_TYPES: tuple[str, ...] = ("qa", "completion", "generation", "response")


def starter_items_path() -> Path:
    """The shipped starter/baseline items (>= 120, all four types)."""
    return Path(__file__).resolve().parent / "data" / "starter_items.jsonl"


def _described(item: dict, field: str) -> str:
    """How a bad required field reads in an error: missing, empty, or its JSON type."""
    if field not in item:
        return "missing"
    v = item[field]
    if isinstance(v, str):
        return "empty"
    kind = {type(None): "null", list: "a list", dict: "an object", bool: "a boolean"}.get(type(v), "a number")
    shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
    return f"{kind} ({shown})" if v is not None else kind


def validate_item(item, where: str) -> None:
    """Raise CaiError unless `item` follows the eval item schema."""
    if not isinstance(item, dict):
        raise CaiError(f"{where}: expected an item object, got {type(item).__name__}")
    iid = item.get("id")
    if not isinstance(iid, str) or not iid.strip():
        raise CaiError(f"{where}: field 'id' is {_described(item, 'id')} — give the item a unique string id "
                       f"like \"qa-0001\"")
    where = f"{where} (id {iid})"
    if not isinstance(item.get("type"), str) or item["type"] not in VALID_TYPES:
        raise CaiError(f"{where}: field 'type' is {item.get('type')!r} — it must be one of {', '.join(VALID_TYPES)}")
    instr = item.get("instruction")
    if not isinstance(instr, str) or not instr.strip():
        raise CaiError(f"{where}: field 'instruction' is {_described(item, 'instruction')} — "
                       f"give the raw instruction text as a non-empty string")
    if "checks" not in item:
        raise CaiError(f"{where}: field 'checks' is missing — add a list of checks, "
                       f'e.g. [{{"kind": "contains_any", "values": ["Paris"]}}]')
    validate_checks(item["checks"], where)
    # An item without a check can only be scored on form; every eval item must be verifiable.
    if not item["checks"]:
        raise CaiError(f"{where}: field 'checks' is empty — add at least one check so the answer can be verified")


def load_items(path) -> list[dict]:
    """Read and validate an items JSONL; duplicate ids are an error (scores pair by id)."""
    rows, lines = read_records(path, "eval items")
    seen: dict[str, int] = {}
    for item, ln in zip(rows, lines):
        where = f"{path}:{ln}"
        validate_item(item, where)
        if item["id"] in seen:
            raise CaiError(f"{where}: field 'id' {item['id']!r} duplicates line {seen[item['id']]} "
                           f"— give every item a unique id")
        seen[item["id"]] = ln
    return rows


# ---- type-balanced samples ------------------------------------------------------------------

def _interleave_sources(items: list[dict], rng: random.Random) -> list[dict]:
    """Seeded order that cycles through fact tables (capitals, arithmetic, ...), so a small
    sample of one type spreads over every table instead of mirroring the biggest one."""
    by_src = defaultdict(list)
    for it in sorted(items, key=lambda x: x["id"]):
        by_src[it.get("source", "")].append(it)
    queues = [by_src[k] for k in sorted(by_src)]
    for q in queues:
        rng.shuffle(q)
    rng.shuffle(queues)
    out = []
    while queues:
        out.extend(q.pop() for q in queues)
        queues = [q for q in queues if q]
    return out


def sample_items(pool: list[dict], n: int, seed: int) -> list[dict]:
    """`n` distinct items balanced by type (seeded), spread across fact tables within a
    type. A type with too few items gives its share to the others; n larger than the pool
    is an error; n <= 0 means the whole pool."""
    if n <= 0:
        return list(pool)
    if n > len(pool):
        raise CaiError(f"asked for {n} unique items but the pool holds {len(pool)} — lower n_train_items / n_eval_items in the profile")
    by_type = defaultdict(list)
    for it in pool:
        by_type[it["type"]].append(it)
    rng = random.Random(seed)
    for t in sorted(by_type):
        by_type[t] = _interleave_sources(by_type[t], rng)
    types = sorted(by_type, key=lambda t: VALID_TYPES.index(t) if t in VALID_TYPES else len(VALID_TYPES))
    quota = {t: 0 for t in types}
    remaining = n
    while remaining:  # round-robin: each pass gives one more to every type that still has items
        progressed = False
        for t in types:
            if remaining and quota[t] < len(by_type[t]):
                quota[t] += 1
                remaining -= 1
                progressed = True
        if not progressed:  # unreachable given n <= len(pool); guards an infinite loop
            break
    chosen = [it for t in types for it in by_type[t][:quota[t]]]
    return sorted(chosen, key=lambda x: (types.index(x["type"]), x["id"]))
