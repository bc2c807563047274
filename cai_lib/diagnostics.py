"""Answer-skew detectors for preference pairs (stage 01) and evaluation answers (stage 04).

Why: on the embedded model every yes/no question was answered "Yes" after training
("Is Paris in Germany?" -> "Yes, Paris is in Germany."). The pairs taught it: a 270M
model answers "yes" items right far more often than "no" items, so the verified pairs
that survive are mostly "yes" items. Nothing reported it. This module measures it.

An item's *answer class* comes from its checks: the expected value of its first
``yes_no`` check ("yes"/"no") or of its first ``number`` check ("8", "2.5"). Items with
neither have no class (free text; only first words and lengths are described).

Two comparisons, one rule:

* **answers vs truth on the same items** (`answer_skew`): the share of responses that
  answer class c against the share of those items whose truth is c. A yes-bias shows
  as "yes" answered on 100% of yes/no items whose true "yes" share is 50%.
* **selection vs the pool** (`selection_skew`): the class mix of the items that kept a
  pair against the class mix of all train items. Chosen answers are verified, so their
  class is their item's truth; a skew here means the filter kept one class and dropped
  the other — the training signal then favours that answer regardless of the question.

A kind is *flagged* when some class's share exceeds its true share by more than the
threshold (cfg.skew_threshold) and at least `MIN_CLASS_COUNT` responses fall in that
class (with many distinct numbers, one or two items per class is noise, not a skew).
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from typing import Iterable, Sequence

from .errors import CaiError
from .checks import first_yes_no, last_number, word_count, words

CLASS_KINDS = ("yes_no", "number")
MIN_CLASS_COUNT = 3
NONE = "(none)"  # the response holds no yes/no (or no number) at all


def _num(x: float) -> str:
    return f"{x:g}"


def truth_class(item: dict) -> tuple[str, str] | None:
    """(kind, expected class) from the item's first yes_no or number check, else None."""
    for check in item.get("checks") or []:
        kind = check.get("kind") if isinstance(check, dict) else None
        if kind == "yes_no":
            return "yes_no", str(check["value"]).lower()
        if kind == "number":
            return "number", _num(float(check["value"]))
    return None


def answer_class(kind: str, text: str) -> str:
    """The class a response answers: its first yes/no, or its last number (as scoring reads them)."""
    if kind == "yes_no":
        return first_yes_no(text) or NONE
    if kind == "number":
        v = last_number(text)
        return NONE if v is None else _num(v)
    raise CaiError(f"answer_class: unknown kind {kind!r} — use one of {list(CLASS_KINDS)}")


def _shares(counter: Counter, n: int) -> dict:
    return {k: round(v / n, 4) for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))} if n else {}


def _excess(observed: Counter, truth: Counter, n_obs: int, n_truth: int) -> tuple[float, str | None, int]:
    """(largest observed share minus true share, its class, its observed count); NONE excluded."""
    worst, cls, count = 0.0, None, 0
    for c, k in sorted(observed.items()):
        if c == NONE:
            continue
        ex = k / n_obs - (truth.get(c, 0) / n_truth if n_truth else 0.0)
        if ex > worst + 1e-12:
            worst, cls, count = ex, c, k
    return round(worst, 4), cls, count


def _verdict(excess: float, count: int, threshold: float) -> bool:
    return excess > threshold and count >= MIN_CLASS_COUNT


def answer_skew(records: Sequence[dict], *, text_key: str = "response", threshold: float = 0.10) -> dict:
    """Per class kind: answered vs true class shares on the same items, accuracy, skew, flag.

    `records` carry the item's `checks` and the text under `text_key` (eval records as
    written by stage 03). For yes/no also `yes_share` vs `true_yes_share`.
    """
    _check_threshold(threshold)
    by_kind: dict = defaultdict(lambda: {"truth": Counter(), "answered": Counter(), "correct": 0, "n": 0})
    for i, r in enumerate(records):
        if text_key not in r:
            raise CaiError(f"answer_skew: record {r.get('id', i + 1)!r} has no {text_key!r} field")
        tc = truth_class(r)
        if tc is None:
            continue
        kind, truth = tc
        got = answer_class(kind, r[text_key] or "")
        d = by_kind[kind]
        d["n"] += 1
        d["truth"][truth] += 1
        d["answered"][got] += 1
        d["correct"] += got == truth
    out = {}
    for kind in CLASS_KINDS:
        if kind not in by_kind:
            continue
        d = by_kind[kind]
        n = d["n"]
        excess, cls, count = _excess(d["answered"], d["truth"], n, n)
        row = {"n": n, "accuracy": round(d["correct"] / n, 4), "true_shares": _shares(d["truth"], n),
               "answered_shares": _shares(d["answered"], n), "skew": excess, "skew_class": cls,
               "flagged": _verdict(excess, count, threshold)}
        if kind == "yes_no":
            row["yes_share"] = round(d["answered"]["yes"] / n, 4)
            row["true_yes_share"] = round(d["truth"]["yes"] / n, 4)
        out[kind] = row
    return {"threshold": threshold, "min_class_count": MIN_CLASS_COUNT, "by_kind": out,
            "flagged": any(v["flagged"] for v in out.values()),
            "flagged_kinds": [k for k, v in out.items() if v["flagged"]]}


def selection_skew(kept_items: Iterable[dict], pool_items: Sequence[dict], *, threshold: float = 0.10) -> dict:
    """Class mix of the items behind kept pairs (one entry per pair) vs the whole item pool."""
    _check_threshold(threshold)
    pool = defaultdict(Counter)
    for it in pool_items:
        tc = truth_class(it)
        if tc:
            pool[tc[0]][tc[1]] += 1
    kept = defaultdict(Counter)
    for it in kept_items:
        tc = truth_class(it)
        if tc:
            kept[tc[0]][tc[1]] += 1
    out = {}
    for kind in CLASS_KINDS:
        if kind not in pool:
            continue
        n_pool, n_kept = sum(pool[kind].values()), sum(kept[kind].values())
        row = {"n_pool": n_pool, "n_kept": n_kept, "pool_shares": _shares(pool[kind], n_pool),
               "kept_shares": _shares(kept[kind], n_kept)}
        if n_kept:
            excess, cls, count = _excess(kept[kind], pool[kind], n_kept, n_pool)
            row.update(skew=excess, skew_class=cls, flagged=_verdict(excess, count, threshold))
        else:
            row.update(skew=None, skew_class=None, flagged=False)
        out[kind] = row
    return {"threshold": threshold, "min_class_count": MIN_CLASS_COUNT, "by_kind": out,
            "flagged": any(v["flagged"] for v in out.values()),
            "flagged_kinds": [k for k, v in out.items() if v["flagged"]]}


def _check_threshold(threshold) -> None:
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise CaiError(f"skew threshold must be in (0, 1], got {threshold!r} — set skew_threshold in the profile")


def first_words(texts: Iterable[str], top: int = 5) -> dict:
    """The most common first words (lower-cased, punctuation dropped) and their shares."""
    firsts = Counter()
    n = 0
    for t in texts:
        w = words(t or "")
        firsts[(w[0].strip(".,!?;:\"'()").lower() if w else NONE)] += 1
        n += 1
    return {"n": n, "top": {k: round(v / n, 4) for k, v in firsts.most_common(top)}} if n else {"n": 0, "top": {}}


def _length_summary(values: Sequence[int]) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)
    mid = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    return {"n": len(v), "mean": round(sum(v) / len(v), 2), "median": mid, "min": v[0], "max": v[-1]}


def describe_texts(records: Sequence[dict], *, text_key: str, type_key: str = "type") -> dict:
    """First words and word counts, overall and per item type."""
    groups = defaultdict(list)
    for r in records:
        groups[str(r.get(type_key, "untyped"))].append(r.get(text_key) or "")
    all_texts = [t for g in groups.values() for t in g]
    return {"first_words": first_words(all_texts),
            "first_words_by_type": {t: first_words(g) for t, g in sorted(groups.items())},
            "length_words": _length_summary([word_count(t) for t in all_texts]),
            "length_words_by_type": {t: _length_summary([word_count(x) for x in g]) for t, g in sorted(groups.items())}}


# ---- pairs ----------------------------------------------------------------------------------

def pair_skew(pairs: Sequence[dict], items: Sequence[dict], *, threshold: float = 0.10) -> dict:
    """Everything stage 01 reports about answer skew in its pairs.

    chosen_vs_pool: the class mix of kept pairs against the train pool (selection skew);
    chosen_answers / rejected_answers: each side's answers against its items' truth;
    chosen_text / rejected_text: first words and lengths.
    """
    by_id = {it["id"]: it for it in items}
    missing = sorted({p["item_id"] for p in pairs} - set(by_id))
    if missing:
        raise CaiError(f"pair_skew: pairs refer to items not in the train set (e.g. {missing[0]!r}) — "
                       "pass the train items the pairs were built from")
    recs = [{**by_id[p["item_id"]], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    sel = selection_skew([by_id[p["item_id"]] for p in pairs], items, threshold=threshold)
    chosen = answer_skew(recs, text_key="chosen", threshold=threshold)
    rejected = answer_skew(recs, text_key="rejected", threshold=threshold)
    return {"threshold": threshold, "chosen_vs_pool": sel, "chosen_answers": chosen, "rejected_answers": rejected,
            "chosen_text": describe_texts(recs, text_key="chosen"),
            "rejected_text": describe_texts(recs, text_key="rejected"),
            "flagged": sel["flagged"] or chosen["flagged"],
            "note": ("flagged when an answer class's share exceeds its true share by more than the threshold "
                     f"(and holds >= {MIN_CLASS_COUNT} answers): chosen_vs_pool compares the kept pairs' classes "
                     "with the train pool's; chosen_answers compares chosen answers with their own items' truth")}


def rebalance_pairs(pairs: Sequence[dict], items: Sequence[dict], *, tolerance: float = 0.05,
                    seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Drop pairs (seeded) until no yes/no or number class exceeds its pool share by more than `tolerance`.

    The pool share is the class's share among all train items of that kind; a class's
    allowed count m satisfies m / (m + others) <= pool share + tolerance. Dropping one
    class raises the others' shares, so classes are capped until none exceeds. Returns
    (kept pairs in their original order, dropped pairs).
    """
    if not 0 <= tolerance <= 1:
        raise CaiError(f"pair_balance_tolerance must be in [0, 1], got {tolerance!r}")
    by_id = {it["id"]: it for it in items}
    pool = defaultdict(Counter)
    for it in items:
        tc = truth_class(it)
        if tc:
            pool[tc[0]][tc[1]] += 1
    rng = random.Random(f"{seed}:rebalance")
    keep = list(range(len(pairs)))
    dropped_idx: set[int] = set()
    for kind in CLASS_KINDS:
        n_pool = sum(pool[kind].values())
        if not n_pool:
            continue
        while True:
            groups = defaultdict(list)
            for i in keep:
                tc = truth_class(by_id.get(pairs[i]["item_id"], {}))
                if tc and tc[0] == kind:
                    groups[tc[1]].append(i)
            n = sum(len(g) for g in groups.values())
            worst = None
            for c, g in sorted(groups.items()):
                allowed_share = min(1.0, pool[kind][c] / n_pool + tolerance)
                if len(g) / n > allowed_share + 1e-12:
                    over = len(g) / n - allowed_share
                    if worst is None or over > worst[0]:
                        worst = (over, c, allowed_share)
            if worst is None:
                break
            _, c, s = worst
            others = n - len(groups[c])
            allowed = math.floor(s * others / (1 - s) + 1e-9) if s < 1 else len(groups[c])
            drop = rng.sample(groups[c], len(groups[c]) - allowed)
            dropped_idx.update(drop)
            keep = [i for i in keep if i not in dropped_idx]
    return [pairs[i] for i in keep], [pairs[i] for i in sorted(dropped_idx)]


# ---- evaluation ----------------------------------------------------------------------------

def eval_skew(records_by_arm: dict, *, threshold: float = 0.10) -> dict:
    """answer_skew of each arm's evaluation answers ({"trained": [...], "base_fewshot": [...]})."""
    return {"threshold": threshold,
            "arms": {arm: answer_skew(recs, threshold=threshold) for arm, recs in records_by_arm.items()},
            "flagged_arms": [arm for arm, recs in records_by_arm.items()
                             if answer_skew(recs, threshold=threshold)["flagged"]]}


def skew_frame(skew: dict):
    """A display table of answer_skew / selection_skew / eval_skew / pair_skew results."""
    import pandas as pd
    rows = []

    def add(source, res):
        for kind, r in res.get("by_kind", {}).items():
            rows.append({"source": source, "kind": kind, "n": r.get("n", r.get("n_kept")),
                         "true_shares": r.get("true_shares", r.get("pool_shares")),
                         "answered_shares": r.get("answered_shares", r.get("kept_shares")),
                         "accuracy": r.get("accuracy"), "skew": r.get("skew"), "skew_class": r.get("skew_class"),
                         "flagged": r.get("flagged")})

    if "arms" in skew:
        for arm, res in skew["arms"].items():
            add(arm, res)
    elif "chosen_vs_pool" in skew:
        add("kept pairs vs train pool", skew["chosen_vs_pool"])
        add("chosen answers", skew["chosen_answers"])
        add("rejected answers", skew["rejected_answers"])
    else:
        add("answers", skew)
    return pd.DataFrame(rows)


def pair_type_frame(pair_stats: dict):
    """Per pair type (from pair_stats.json): n, share_chosen_shorter, length ratio median,
    share length-matched and share of verifiably correct preferences."""
    import pandas as pd
    rows = []
    for t, v in (pair_stats.get("pair_types") or {}).items():
        rows.append({"pair_type": t, "n": v["n"], "share_chosen_shorter": v["share_chosen_shorter"],
                     "length_ratio_median": v["length_ratio"].get("median"),
                     "share_length_matched": v["share_length_matched"], "pair_correct": v["pair_correct"]})
    return pd.DataFrame(rows)


def strategy_frame(pair_stats: dict):
    """Per strategy (from pair_stats.json): pairs, items with a pair, keep-rate, pair correctness."""
    import pandas as pd
    return pd.DataFrame([{"strategy": s, **v} for s, v in (pair_stats.get("by_strategy") or {}).items()])
