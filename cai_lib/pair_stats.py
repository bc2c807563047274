"""What a preference pair is measured by, and stage 01's pair diagnostics (pair_stats.json).

Lengths in the design's words (as the scorer counts them), word edit distance, whether two
texts differ only by length, and the per-type / per-strategy summaries that show whether
the pairs teach following instructions or only shortening (the replaced system's flaw).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

from .checks import word_count
from .diagnostics import pair_skew
from .scoring import is_empty
from .text import plain_key

# Why a candidate pair is dropped, in the order that decides its first (reported) reason.
REASONS = ("chosen_empty", "chosen_unfinished", "chosen_fails_strict", "rejected_empty", "identical",
           "rejected_passes_strict", "rebalanced")

count_words = word_count  # the design's word, as the scorer counts it


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance over whitespace tokens (punctuation stays on its word)."""
    x, y = a.split(), b.split()
    prev = list(range(len(y) + 1))
    for i, xi in enumerate(x, 1):
        cur = [i] + [0] * len(y)
        for j, yj in enumerate(y, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (xi != yj))
        prev = cur
    return prev[-1]


def length_only_kind(chosen: str, rejected: str) -> str | None:
    """How two texts differ only by length, or None when their words differ.

    Compared as word sequences (lower-cased, punctuation dropped, whitespace collapsed),
    so "Lima is the capital of Peru." counts as a trim of "Lima is the capital of Peru
    and a big city." Kinds: ``same_words`` (only case/punctuation/whitespace differ);
    ``chosen_prefix`` (rejected = chosen + more: it ran on past where chosen stopped —
    format_distillation's intended "learn to stop" signal); ``chosen_within`` (chosen is
    a run of rejected's words, not at its start); ``rejected_within`` (chosen = rejected
    + more words). A high share of trims in critique_revision means the "revision" only
    shortens (the replaced system "improved" answers by shortening them).
    """
    c, r = plain_key(chosen), plain_key(rejected)
    if not c or not r:
        return None
    if c == r:
        return "same_words"
    if r.startswith(c + " "):
        return "chosen_prefix"
    if f" {c} " in f" {r} ":
        return "chosen_within"
    if f" {r} " in f" {c} ":
        return "rejected_within"
    return None


def length_ratio(chosen: str, rejected: str) -> float:
    """chosen words / rejected words (an empty rejected counts as one word)."""
    return count_words(chosen) / max(1, count_words(rejected))


def is_length_matched(chosen: str, rejected: str, tolerance: float = 0.3) -> bool:
    """Rejected's word count within ±tolerance of chosen's (both non-empty)."""
    c, r = count_words(chosen), count_words(rejected)
    return c > 0 and r > 0 and abs(r - c) <= tolerance * c


def is_eos_immediately(text: str, finish_reason: str) -> bool:
    """The model ended its answer before writing a word (scoring's `empty` detector, and it stopped)."""
    return finish_reason in ("eos", "stop") and is_empty(text)


# ---- diagnostics ------------------------------------------------------------------------

def _quantiles(values: Sequence[float]) -> dict:
    import numpy as np
    if not values:
        return {"n": 0}
    v = np.asarray(values, dtype=float)
    q = np.percentile(v, [0, 10, 25, 50, 75, 90, 100])
    return {"n": int(v.size), "mean": round(float(v.mean()), 3),
            **{k: round(float(x), 3) for k, x in zip(("min", "p10", "p25", "median", "p75", "p90", "max"), q)}}


def _pair_correct(p: dict) -> bool:
    """The preference is verifiable: chosen passes strict and rejected does not."""
    return bool(p["scores"]["chosen"]["strict"]) and not p["scores"]["rejected"]["strict"]


def by_pair_type(pairs: Sequence[dict], tolerance: float = 0.3) -> dict:
    """Per pair type: count, share_chosen_shorter, chosen/rejected length ratio, share of
    length-matched pairs (within ±tolerance) and share of verifiably correct preferences."""
    groups = defaultdict(list)
    for p in pairs:
        groups[p.get("pair_type", "raw_continuation")].append(p)
    groups["all"] = list(pairs)
    out = {}
    for t, ps in groups.items():
        if not ps:
            continue
        n = len(ps)
        out[t] = {"n": n,
                  "share_chosen_shorter": round(sum(count_words(p["chosen"]) < count_words(p["rejected"])
                                                    for p in ps) / n, 4),
                  "length_ratio": _quantiles([length_ratio(p["chosen"], p["rejected"]) for p in ps]),
                  "share_length_matched": round(sum(is_length_matched(p["chosen"], p["rejected"], tolerance)
                                                    for p in ps) / n, 4),
                  "pair_correct": round(sum(_pair_correct(p) for p in ps) / n, 4)}
    return out


def by_strategy(pairs: Sequence[dict], dropped: Sequence[dict], items: Sequence[dict] | None) -> dict:
    """Keep-rate (items that gave at least one pair) and pair correctness per strategy."""
    out = {}
    for st in sorted({p["strategy"] for p in pairs} | {d["strategy"] for d in dropped}):
        ps = [p for p in pairs if p["strategy"] == st]
        with_pair = {p["item_id"] for p in ps}
        n_items = len(items) if items is not None else len(with_pair | {d["item_id"] for d in dropped
                                                                      if d["strategy"] == st})
        out[st] = {"n_pairs": len(ps), "n_items": n_items, "items_with_pair": len(with_pair),
                   "keep_rate_items": round(len(with_pair) / n_items, 4) if n_items else None,
                   "pair_correct": round(sum(_pair_correct(p) for p in ps) / len(ps), 4) if ps else None}
    return out


def vote_summary(pairs: Sequence[dict]) -> dict | None:
    """self_consistency: how often the vote kept greedy, rescued a failed greedy answer, agreed."""
    vs = {p["item_id"]: p["vote"] for p in pairs if isinstance(p.get("vote"), dict)}
    if not vs:
        return None
    n = len(vs)
    agree = [v["agreement"] for v in vs.values() if v.get("agreement") is not None]
    return {"n_items": n,
            "chosen_from_greedy": sum(v["chosen_source"] == "greedy" for v in vs.values()),
            "rescued_by_samples": sum(not v["greedy_verified"] for v in vs.values()),
            "plurality_is_chosen": round(sum(bool(v["plurality_is_chosen"]) for v in vs.values()) / n, 4),
            "agreement_mean": round(sum(agree) / len(agree), 4) if agree else None}


def pair_diagnostics(pairs: Sequence[dict], dropped: Sequence[dict], generation: dict | None = None, *,
                     items: Sequence[dict] | None = None, cfg=None) -> dict:
    """Counts kept/dropped (why, by strategy and type), length and edit-distance
    distributions, the share of pairs that differ only by length; per pair type the
    length ratio and share of length-matched pairs; per strategy keep-rate and pair
    correctness; and, given the train `items`, the answer-skew report (diagnostics.pair_skew)."""
    kept = defaultdict(Counter)
    for p in pairs:
        kept[p["strategy"]][p["type"]] += 1
    drop = defaultdict(lambda: defaultdict(Counter))
    by_reason, any_reason, failures = Counter(), Counter(), Counter()
    examples = defaultdict(list)
    for d in dropped:
        drop[d["strategy"]][d["type"]][d["reason"]] += 1
        by_reason[d["reason"]] += 1
        any_reason.update(d.get("reasons", [d["reason"]]))
        if d["reason"] == "chosen_fails_strict":
            failures.update(d.get("failures", []))
        if len(examples[d["reason"]]) < 3:
            examples[d["reason"]].append({k: (v[:200] if isinstance(v, str) else v) for k, v in d.items()
                                          if k in ("item_id", "type", "chosen", "rejected", "failures")})
    tol = float(getattr(cfg, "pair_sc_length_tolerance", 0.3))
    threshold = float(getattr(cfg, "skew_threshold", 0.10))
    cw = [p["lengths"]["chosen_words"] for p in pairs]
    rw = [p["lengths"]["rejected_words"] for p in pairs]
    ed = [p["edit_distance_words"] for p in pairs]
    edn = [p["edit_distance_words"] / max(1, len(p["chosen"].split()), len(p["rejected"].split())) for p in pairs]
    lo = Counter(p["length_only"] for p in pairs if p.get("length_only"))
    n = len(pairs)
    n_lo = sum(lo.values())
    rej_strict = sum(1 for p in pairs if p["scores"]["rejected"]["strict"])
    return {
        "n_candidates": n + len(dropped),
        "n_kept": n,
        "n_dropped": len(dropped),
        "keep_rate": round(n / (n + len(dropped)), 4) if (n + len(dropped)) else None,
        "kept": {s: dict(c) for s, c in kept.items()},
        "dropped": {s: {t: dict(c) for t, c in d.items()} for s, d in drop.items()},
        "dropped_by_reason": dict(by_reason),
        "dropped_any_reason": dict(any_reason),
        "reason_order": list(REASONS),
        "chosen_failures": dict(failures.most_common()),
        "length_words": {"chosen": _quantiles(cw), "rejected": _quantiles(rw),
                         "chosen_minus_rejected": _quantiles([c - r for c, r in zip(cw, rw)])},
        "share_chosen_shorter": round(sum(c < r for c, r in zip(cw, rw)) / n, 4) if n else None,
        "edit_distance_words": _quantiles(ed),
        "edit_distance_normalized": _quantiles(edn),
        "length_only": {
            "n": n_lo, "share": round(n_lo / n, 4) if n else None, "by_kind": dict(lo),
            "note": "pairs whose texts differ only by length (one is a contiguous run of the other's words, case "
                    "and punctuation ignored; same_words = only case/punctuation differ). chosen_prefix = the raw continuation ran on past the answer (format_distillation's "
                    "intended stop signal); chosen_within / rejected_within = content trimmed or padded — a high share "
                    "means the 'improvement' is shortening, as in the replaced system.",
        },
        "rejected_passes_strict": {"n": rej_strict, "share": round(rej_strict / n, 4) if n else None},
        "dropped_examples": dict(examples),
        "generation": generation or {},
        "pair_types": by_pair_type(pairs, tol),
        "share_length_matched": round(sum(is_length_matched(p["chosen"], p["rejected"], tol) for p in pairs) / n, 4)
        if n else None,
        "pair_correct": round(sum(_pair_correct(p) for p in pairs) / n, 4) if n else None,
        "by_strategy": by_strategy(pairs, dropped, items),
        "empty_chosen": sum(1 for p in pairs if not p["chosen"].strip()),
        "empty_rejected_pairs": sum(1 for p in pairs if p.get("pair_type") == "empty_rejected"),
        "vote": vote_summary(pairs),
        "balance": ({"enabled": bool(getattr(cfg, "pair_balance", False)),
                     "tolerance": getattr(cfg, "pair_balance_tolerance", None),
                     "dropped": by_reason.get("rebalanced", 0)} if cfg is not None else None),
        "answer_skew": pair_skew(pairs, items, threshold=threshold) if items is not None else None,
        "skew_flagged": bool(items is not None and pair_skew(pairs, items, threshold=threshold)["flagged"]),
    }
