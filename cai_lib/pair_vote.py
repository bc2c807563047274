"""self_consistency's vote: the greedy answer and k sampled answers, cut and scored; the
verified answer most of them agree on is chosen, and verified-*wrong* samples close in
length to it become extra rejected answers (pairs that differ in correctness, not length).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from .diagnostics import answer_class, truth_class
from .pair_generation import cut_answer, score_answer
from .pair_stats import count_words, is_eos_immediately, is_length_matched
from .text import plain_key, squash_spaces


def candidates(item: dict, greedy: str, greedy_fr: str, sample_row: dict | None) -> list[dict]:
    """The greedy answer and each sample, cut at the frame's stops and scored."""
    cands = [{"source": "greedy", "index": 0, "text": greedy, "fr": greedy_fr, "score": score_answer(item, greedy, greedy_fr)}]
    for j, smp in enumerate((sample_row or {}).get("samples", []), 1):
        text, fr = cut_answer(smp, "response")
        cands.append({"source": f"sample{j - 1}", "index": j, "text": text, "fr": fr, "score": score_answer(item, text, fr)})
    return cands


def answer_key(item: dict, text: str) -> str:
    """What two answers must share to count as the same vote: the yes/no or the number
    when the item's checks ask for one, else the normalised text."""
    tc = truth_class(item)
    if tc is not None:
        return f"{tc[0]}:{answer_class(tc[0], text)}"
    return "text:" + plain_key(text)


def _verified(c: dict) -> bool:
    return c["score"]["strict"] and c["fr"] != "length" and bool(c["text"].strip())


def vote(item: dict, candidates: Sequence[dict]) -> dict:
    """The verified answer most candidates agree on (deterministic ties), with the tally.

    Verified = passes strict (every check and detector) and finished. Groups are verified
    candidates by `answer_key`; the largest group wins; a tie goes to the group holding the
    greedy answer, then to the group whose first member came earliest. The winner's text is
    the greedy answer when it is in the group, else the group's earliest sample.
    `agreement` is the winner's share of all finished candidates (right or wrong)."""
    candidates = sorted(candidates, key=lambda c: c["index"])  # the order given never decides the vote
    finished = [c for c in candidates if c["fr"] != "length"]
    tally = Counter(answer_key(item, c["text"]) for c in finished)
    groups: dict[str, list[dict]] = {}
    for c in candidates:
        if _verified(c):
            groups.setdefault(answer_key(item, c["text"]), []).append(c)
    if not groups:
        return {"chosen": None, "key": None, "tally": dict(tally), "n_verified": 0, "n_finished": len(finished),
                "candidates": list(candidates)}
    key = min(groups, key=lambda g: (-len(groups[g]), groups[g][0]["index"] != 0, groups[g][0]["index"]))
    chosen = groups[key][0]  # candidates are in index order, so greedy (index 0) comes first
    return {"chosen": chosen, "key": key, "tally": dict(tally), "n_verified": sum(len(g) for g in groups.values()),
            "n_finished": len(finished), "votes": len(groups[key]),
            "agreement": round(tally[key] / len(finished), 4) if finished else None,
            "plurality_is_chosen": bool(tally) and max(tally.values()) == tally[key],
            "candidates": list(candidates)}


def vote_record(v: dict) -> dict:
    return {k: v.get(k) for k in ("key", "votes", "n_verified", "n_finished", "agreement", "plurality_is_chosen")} | {
        "chosen_source": v["chosen"]["source"] if v.get("chosen") else None,
        "greedy_verified": _verified(v["candidates"][0]) if v.get("candidates") else None}


def wrong_samples(v: dict, chosen: str, n: int, tolerance: float = 0.3) -> list[dict]:
    """Up to n finished, verified-wrong candidates to pair against `chosen`: length-matched
    ones first, closest in length first; distinct texts; an EOS-immediately one last."""
    if n <= 0:
        return []
    seen = {squash_spaces(chosen)}
    out = []
    wrong = [c for c in v.get("candidates", []) if c["fr"] != "length" and not c["score"]["strict"]]

    def rank(c):
        empty = is_eos_immediately(c["text"], c["fr"])
        ratio = abs(math.log(max(1, count_words(c["text"])) / max(1, count_words(chosen))))
        return (empty, not is_length_matched(chosen, c["text"], tolerance), ratio, c["index"])

    for c in sorted(wrong, key=rank):
        if squash_spaces(c["text"]) in seen:
            continue
        seen.add(squash_spaces(c["text"]))
        out.append(c)
        if len(out) == n:
            break
    return out
