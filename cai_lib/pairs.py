"""Self-generated DPO preference pairs (stage 01) and their diagnostics.

Two strategies, picked per profile (`cfg.pair_strategy`):

* ``format_distillation`` — chosen = the base model's answer under a few-shot completion
  frame (cut at the frame's stop string); rejected = its own continuation of the *raw*
  instruction with no stop strings, truncated at `max_new_tokens` — exactly what
  evaluation would see. The pair teaches the model to do unprompted what it already does
  with a format cue (answer, then stop).
* ``critique_revision`` (the seed's method) — few-shot response frame → answer; few-shot
  critique frame judges it against the Stage-1 principles; few-shot revision frame
  rewrites it. chosen = revision, rejected = original answer.

* ``self_consistency`` (issue 12) — the response step's greedy answer plus
  `pair_sc_k` *sampled* answers to the same few-shot prompt (temperature
  `pair_sc_temperature`, seeded per slice of items, cai_lib.sampling). Each candidate is
  cut and scored; the verified (strict-passing) answers vote by answer (yes/no, number,
  else normalised text) and the most-voted verified answer is chosen — ties go to the
  group holding the greedy answer, then to the earliest sample, so the vote is
  deterministic. Rejected: the raw continuation (as format_distillation: "answer, then
  stop"), plus up to `pair_sc_max_wrong` finished, verified-*wrong* samples, closest in
  length to chosen first — pairs that differ in correctness at similar length, not only
  in length (format_distillation's chosen is shorter in every pair).

Every pair records its ``pair_type``: ``raw_continuation`` (rejected = the raw
continuation), ``revision`` (critique_revision), ``wrong_sample`` (a verified-wrong
sample), or ``empty_rejected`` — the model emitted EOS (or the frame's stop) at once: an
empty answer is never chosen (chosen_empty), and when it appears as the rejected side it
is kept as an example of what not to do (the scorer's ``empty`` detector fails it). With
cfg.pair_balance, pairs are then dropped (seeded, reason ``rebalanced``) until no yes/no
or number answer class exceeds its share among the train items by more than
cfg.pair_balance_tolerance (cai_lib.diagnostics.rebalance_pairs).

Conventions (shared with `train.py`; see DESIGN.md's contracts):

* ``prompt`` is the item's instruction *exactly* as evaluation presents it (raw, no frame).
* ``chosen`` / ``rejected`` are answer texts with surrounding whitespace stripped; the
  file holds them as TRL trains on them (`trl_record`: separator + answer in ``chosen`` /
  ``rejected``, the stripped answers in ``chosen_answer`` / ``rejected_answer``).
  `train.encode_pair` adds the separator on the completion side (``"\\n" + chosen`` when
  cfg.chosen_leading_space is False, ``" " + chosen`` when True) and appends EOS, so the
  prompt tokens equal evaluation's and chosen ends where an answer should end: the
  model learns to stop. A format_distillation rejected cut by `max_new_tokens` gets EOS
  too (its finish_reason is kept in ``finish_reasons`` for anyone who wants to filter).
* "Strict" for a cut answer: the answer is scored by `scoring.score_record` on the cut
  text with finish_reason ``stop`` when the frame's stop string ended it (the model wrote
  the separator the frame uses to end an answer, i.e. it finished), ``eos`` when it
  emitted EOS, and ``length`` otherwise — so an answer still running at
  `max_new_tokens` fails strict ("chosen_unfinished") exactly as it would at evaluation.
  Every check and detector (empty, echo, continuation) must pass on the cut text.

Filtering (a dropped candidate gets its first reason, in this order, plus all reasons
known): chosen_empty, chosen_unfinished, chosen_fails_strict, rejected_empty (blank and not
finished; a finished blank answer is an empty_rejected pair instead), identical
(after whitespace normalisation), rejected_passes_strict (the rejected already passes
strict, so the pair has no verifiable preference; kept when
cfg.pair_keep_if_rejected_passes — measured on Gemma 3 270M, such critique_revision
pairs were restyled or padded answers, e.g. "Yes." -> "Yes, it is a yes."). To save CPU time, later generation steps run only for
candidates that can still become pairs: the raw continuation only where chosen passed;
critique and revision only where the original answer is non-empty.

Resumable generation: each batch's rows are appended (fsync'd whole lines) to
``data/generations.jsonl`` keyed by (item_id, step). A rerun skips finished keys.
Batches are fixed slices of each step's ordered item list, so a resumed run feeds the
model the same batches as an uninterrupted one (left padding can change greedy output
with batch composition). Few-shot examples come from a per-(item, step) seeded RNG, so
rotation does not depend on order or resume either; their ids are stored per row for
the leakage guard.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from typing import Callable, Sequence

from . import prompts
from .errors import CaiError
from .diagnostics import answer_class, pair_skew, rebalance_pairs, truth_class
from .jsonl import append_jsonl, read_jsonl, repair_torn_tail, write_json, write_jsonl
from .checks import word_count
from .scoring import is_empty, score_record
from .text import plain_key

STRATEGIES = ("format_distillation", "critique_revision", "self_consistency")
# Steps are named by what they generate, not by strategy, so both strategies share the
# "response" step's rows when a run switches strategy.
STEPS = {
    "format_distillation": ("response", "raw"),
    "critique_revision": ("response", "critique", "revision"),
    "self_consistency": ("response", "sample", "raw"),
}
REASONS = ("chosen_empty", "chosen_unfinished", "chosen_fails_strict", "rejected_empty", "identical",
           "rejected_passes_strict", "rebalanced")
PAIR_TYPES = ("raw_continuation", "revision", "wrong_sample", "empty_rejected")
GEN_FIELDS = ("item_id", "step", "prompt", "response", "finish_reason")


# ---- small text helpers -----------------------------------------------------------------

def _ws(text: str) -> str:
    return " ".join(text.split())


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


def _score(item: dict, text: str, finish_reason: str) -> dict:
    rec = {k: item[k] for k in ("id", "type", "instruction", "checks")}
    rec.update(response=text, finish_reason=finish_reason)
    s = score_record(rec)
    return {"strict": bool(s["strict"]), "loose": bool(s["loose"]), "form": bool(s["form"]),
            "failures": list(s.get("failures", []))}


def _cut_answer(row: dict, step: str) -> tuple[str, str]:
    """(answer text, finish_reason) of a framed generation, cut at the frame's stops."""
    text, hit = prompts.cut_at_stop(row["response"], prompts.stop_strings(step))
    fr = "stop" if hit or row["finish_reason"] == "stop" else row["finish_reason"]
    return text.strip(), fr


# ---- generation store -------------------------------------------------------------------

class _Store:
    """Rows of data/generations.jsonl by (item_id, step); appends survive interruption."""

    def __init__(self, path):
        self.path = path
        self.rows: dict[tuple[str, str], dict] = {}
        if path.exists():
            repair_torn_tail(path)  # a kill mid-append leaves a partial last line
            for row in read_jsonl(path, required=GEN_FIELDS, tolerate_torn_tail=True):
                self.rows.setdefault((row["item_id"], row["step"]), row)

    def get(self, item_id: str, step: str) -> dict | None:
        return self.rows.get((item_id, step))

    def add(self, rows: list[dict]) -> None:
        append_jsonl(self.path, rows)
        for row in rows:
            self.rows[(row["item_id"], row["step"])] = row


def _default_generate(*args, **kwargs):
    from .generate import generate  # lazy: torch-heavy module
    return generate(*args, **kwargs)


def _default_rotate(*args, **kwargs):
    from .fewshot import rotate
    return rotate(*args, **kwargs)


def _request(item: dict, step: str, store: _Store, k: int, seed: int, rotate_fn) -> tuple[str, list[str]]:
    """(prompt, few-shot ids) for one item's step; earlier steps' rows come from `store`."""
    if step == "raw":
        return prompts.format_prompt(item["instruction"], "raw"), []
    examples = prompts.rotate_excluding(rotate_fn, item["type"], step, k,
                                        prompts.item_rng(seed, item["id"], step), item["instruction"])
    if step == "response":
        return prompts.response_frame(item["instruction"], examples), prompts.fewshot_ids(examples)
    answer, _ = _cut_answer(store.get(item["id"], "response"), "response")
    if step == "critique":
        return prompts.critique_frame(item["instruction"], answer, examples), prompts.fewshot_ids(examples)
    critique, _ = _cut_answer(store.get(item["id"], "critique"), "critique")
    return prompts.revision_frame(item["instruction"], answer, critique, examples), prompts.fewshot_ids(examples)


def _run_step(step, items, store, *, loaded, gen, rotate_fn, cfg, max_new_tokens, progress, timing):
    stops = prompts.stop_strings(step)
    bs = max(1, int(cfg.gen_batch_size))
    t = timing.setdefault(step, {"generated": 0, "resumed": 0, "new_tokens": 0, "wall_s": 0.0})
    requests = []
    for it in items:
        prompt, ids = _request(it, step, store, cfg.n_fewshot, cfg.seed, rotate_fn)
        have = store.get(it["id"], step)
        if have is not None and (have["prompt"] != prompt or have.get("max_new_tokens") != max_new_tokens):
            raise CaiError(
                f"{store.path}: the stored {step!r} generation for item {it['id']!r} was made with a different "
                "prompt or max_new_tokens — delete that file (or use a new --run-id) to regenerate"
            )
        requests.append((it, prompt, ids))
    # Longest prompts first (less padding per batch, as generate() does within a call);
    # the order and the batch slices depend only on the prompts, so a resumed run sees
    # the same batches as an uninterrupted one.
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][1]), i))
    chunks = [[requests[i] for i in order[j:j + bs]] for j in range(0, len(order), bs)]
    bar = None
    if progress:
        from tqdm import tqdm  # text bars: they render in the executed notebook and its HTML
        bar = tqdm(total=len(chunks), desc=f"pairs:{step}")
    try:
        for chunk in chunks:
            todo = [r for r in chunk if store.get(r[0]["id"], step) is None]
            t["resumed"] += len(chunk) - len(todo)
            if todo:
                t0 = time.perf_counter()
                outs = gen(getattr(loaded, "model", None), getattr(loaded, "tokenizer", None), [p for _, p, _ in todo],
                           max_new_tokens=max_new_tokens, batch_size=bs, stop=stops or None,
                           progress=False, desc=f"pairs:{step}")
                t["wall_s"] += time.perf_counter() - t0
                if len(outs) != len(todo):
                    raise CaiError(f"generate returned {len(outs)} records for {len(todo)} prompts — a bug in generate")
                rows = []
                for (it, prompt, ids), out in zip(todo, outs):
                    rows.append({
                        "item_id": it["id"], "step": step, "type": it["type"], "prompt": prompt,
                        "response": out["response"], "finish_reason": out["finish_reason"],
                        "prompt_tokens": out.get("prompt_tokens"), "new_tokens": out.get("new_tokens"),
                        "seconds": out.get("seconds"), "fewshot_ids": ids,
                        "max_new_tokens": max_new_tokens, "stop": stops,
                    })
                    t["generated"] += 1
                    t["new_tokens"] += int(out.get("new_tokens") or 0)
                store.add(rows)  # whole batch appended at once: resume never splits a batch
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


# ---- self-consistency: sampled answers and the vote ------------------------------------

def _default_sample(*args, **kwargs):
    from .sampling import sample_generate  # lazy: torch-heavy module
    return sample_generate(*args, **kwargs)


def _slice_seed(seed: int, ids: Sequence[str]) -> int:
    """A seed for one slice of items: depends on the run seed and the slice's ids only."""
    import hashlib
    return int.from_bytes(hashlib.sha256(f"{seed}:{','.join(ids)}".encode()).digest()[:4], "big")


def _run_sample_step(items, store, *, loaded, sample_fn, cfg, max_new_tokens, rotate_fn, progress, timing):
    """k sampled answers per item to its response-step prompt, stored as one row per item."""
    step, k, temp = "sample", int(cfg.pair_sc_k), float(cfg.pair_sc_temperature)
    stops = prompts.stop_strings("response")
    t = timing.setdefault(step, {"generated": 0, "resumed": 0, "new_tokens": 0, "wall_s": 0.0})
    requests = []
    for it in items:
        prompt, _ = _request(it, "response", store, cfg.n_fewshot, cfg.seed, rotate_fn)
        have = store.get(it["id"], step)
        if have is not None and (have["prompt"] != prompt or have.get("max_new_tokens") != max_new_tokens
                                 or have.get("k") != k or have.get("temperature") != temp):
            raise CaiError(f"{store.path}: the stored sampled answers for item {it['id']!r} were made with another "
                           "prompt, max_new_tokens, pair_sc_k or pair_sc_temperature — delete that file (or use a "
                           "new --run-id) to regenerate")
        requests.append((it, prompt))
    per_call = max(1, int(cfg.gen_batch_size) // k)  # rows per call = prompts x k
    order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][1]), i))
    chunks = [[requests[i] for i in order[j:j + per_call]] for j in range(0, len(order), per_call)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(chunks), desc="pairs:sample")
    try:
        for chunk in chunks:
            if all(store.get(it["id"], step) is not None for it, _ in chunk):
                t["resumed"] += len(chunk)
            else:  # a chunk is stored whole, so a resumed run never re-draws part of one
                seed = _slice_seed(cfg.seed, [it["id"] for it, _ in chunk])
                t0 = time.perf_counter()
                outs = sample_fn(getattr(loaded, "model", None), getattr(loaded, "tokenizer", None),
                                 [p for _, p in chunk], k=k, temperature=temp, max_new_tokens=max_new_tokens,
                                 stop=stops, seed=seed)
                t["wall_s"] += time.perf_counter() - t0
                if len(outs) != len(chunk) or any(len(o) != k for o in outs):
                    raise CaiError("sample_generate returned the wrong number of samples — a bug in sampling")
                rows = []
                for (it, prompt), samples in zip(chunk, outs):
                    rows.append({"item_id": it["id"], "step": step, "type": it["type"], "prompt": prompt,
                                 "response": "", "finish_reason": "", "samples": samples, "k": k,
                                 "temperature": temp, "seed": seed, "max_new_tokens": max_new_tokens, "stop": stops})
                    t["generated"] += 1
                    t["new_tokens"] += sum(int(x.get("new_tokens") or 0) for x in samples)
                store.add(rows)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _candidates(item: dict, greedy: str, greedy_fr: str, sample_row: dict | None) -> list[dict]:
    """The greedy answer and each sample, cut at the frame's stops and scored."""
    cands = [{"source": "greedy", "index": 0, "text": greedy, "fr": greedy_fr, "score": _score(item, greedy, greedy_fr)}]
    for j, smp in enumerate((sample_row or {}).get("samples", []), 1):
        text, fr = _cut_answer(smp, "response")
        cands.append({"source": f"sample{j - 1}", "index": j, "text": text, "fr": fr, "score": _score(item, text, fr)})
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


def _vote_record(v: dict) -> dict:
    return {k: v.get(k) for k in ("key", "votes", "n_verified", "n_finished", "agreement", "plurality_is_chosen")} | {
        "chosen_source": v["chosen"]["source"] if v.get("chosen") else None,
        "greedy_verified": _verified(v["candidates"][0]) if v.get("candidates") else None}


def length_ratio(chosen: str, rejected: str) -> float:
    """chosen words / rejected words (an empty rejected counts as one word)."""
    return count_words(chosen) / max(1, count_words(rejected))


def is_length_matched(chosen: str, rejected: str, tolerance: float = 0.3) -> bool:
    """Rejected's word count within ±tolerance of chosen's (both non-empty)."""
    c, r = count_words(chosen), count_words(rejected)
    return c > 0 and r > 0 and abs(r - c) <= tolerance * c


def wrong_samples(v: dict, chosen: str, n: int, tolerance: float = 0.3) -> list[dict]:
    """Up to n finished, verified-wrong candidates to pair against `chosen`: length-matched
    ones first, closest in length first; distinct texts; an EOS-immediately one last."""
    if n <= 0:
        return []
    seen = {_ws(chosen)}
    out = []
    wrong = [c for c in v.get("candidates", []) if c["fr"] != "length" and not c["score"]["strict"]]

    def rank(c):
        empty = is_eos_immediately(c["text"], c["fr"])
        ratio = abs(math.log(max(1, count_words(c["text"])) / max(1, count_words(chosen))))
        return (empty, not is_length_matched(chosen, c["text"], tolerance), ratio, c["index"])

    for c in sorted(wrong, key=rank):
        if _ws(c["text"]) in seen:
            continue
        seen.add(_ws(c["text"]))
        out.append(c)
        if len(out) == n:
            break
    return out


# ---- pair assembly ----------------------------------------------------------------------

def _new_tokens(store: _Store, item: dict, steps) -> dict:
    """Generation metadata kept on a pair: new tokens per step (before cutting)."""
    return {s: store.get(item["id"], s).get("new_tokens") for s in steps}


def _drop(item, strategy, reasons, **extra) -> dict:
    ordered = [r for r in REASONS if r in reasons]
    return {"item_id": item["id"], "type": item["type"], "strategy": strategy,
            "reason": ordered[0], "reasons": ordered, **extra}


def _chosen_reasons(chosen: str, fr: str, score: dict) -> list[str]:
    reasons = []
    if not chosen.strip():
        reasons.append("chosen_empty")
    if fr == "length":
        reasons.append("chosen_unfinished")
    if not score["strict"]:
        reasons.append("chosen_fails_strict")
    return reasons


def is_eos_immediately(text: str, finish_reason: str) -> bool:
    """The model ended its answer before writing a word (scoring's `empty` detector, and it stopped)."""
    return finish_reason in ("eos", "stop") and is_empty(text)


def _make_pair(item, strategy, chosen, ch_fr, ch_score, rejected, rj_fr, *, fewshot, extra,
               keep_if_rejected_passes=False, pair_type="raw_continuation") -> dict | tuple:
    reasons = []
    if not chosen.strip():  # never: callers drop chosen_empty first; a pair must not teach silence
        raise CaiError(f"item {item['id']!r}: internal error — an empty answer reached a pair as chosen")
    if is_eos_immediately(rejected, rj_fr):
        pair_type = "empty_rejected"  # stopping at once (no word written) is the failure this pair shows
    elif not rejected.strip():
        reasons.append("rejected_empty")
    elif _ws(chosen) == _ws(rejected):
        reasons.append("identical")
    if reasons:
        return ("drop", reasons)
    rj_score = _score(item, rejected, rj_fr)
    if rj_score["strict"] and not keep_if_rejected_passes:
        return ("drop", ["rejected_passes_strict"])
    return {
        "prompt": item["instruction"],
        "chosen": chosen,
        "rejected": rejected,
        "strategy": strategy,
        "pair_type": pair_type,
        "item_id": item["id"],
        "type": item["type"],
        "scores": {"chosen": ch_score, "rejected": rj_score},
        "lengths": {"chosen_chars": len(chosen), "chosen_words": count_words(chosen),
                    "rejected_chars": len(rejected), "rejected_words": count_words(rejected)},
        "finish_reasons": {"chosen": ch_fr, "rejected": rj_fr},
        "edit_distance_words": word_edit_distance(chosen, rejected),
        "length_only": length_only_kind(chosen, rejected),
        "fewshot_ids": fewshot,
        **extra,
    }


def trl_record(pair: dict, leading_space: bool) -> dict:
    """The pair as written to preference_pairs.jsonl: `chosen`/`rejected` in the exact text TRL
    trains on after `prompt` (the separator included; TRL appends EOS itself), so stock TRL on
    `load_dataset("json", ...)` of the file trains what cai trains. The stripped answers stay
    in `chosen_answer` / `rejected_answer`, which `train.encode_pair` reads."""
    from .train import completion_text
    return {**pair, "chosen": completion_text(pair["prompt"], pair["chosen"], leading_space),
            "rejected": completion_text(pair["prompt"], pair["rejected"], leading_space),
            "chosen_answer": pair["chosen"], "rejected_answer": pair["rejected"]}


def build_pairs(loaded, items: Sequence[dict], cfg, paths, *, strategy: str | None = None,
                generate_fn: Callable | None = None, rotate_fn: Callable | None = None,
                sample_fn: Callable | None = None, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Generate (resumably) and filter preference pairs for `items`.

    `loaded` has `.model` and `.tokenizer` (models.Loaded). `generate_fn` / `rotate_fn`
    default to generate.generate and fewshot.rotate, `sample_fn` to sampling.sample_generate
    (tests inject fakes). Writes
    data/generations.jsonl (appended per batch), data/preference_pairs.jsonl and
    data/pair_stats.json (atomic). Returns (pairs, dropped).
    """
    strategy = strategy or cfg.pair_strategy
    if strategy not in STRATEGIES:
        raise CaiError(f"pair_strategy={strategy!r} is not one of {list(STRATEGIES)} — fix the profile")
    items = list(items)
    seen = set()
    for it in items:
        missing = [k for k in ("id", "type", "instruction", "checks") if k not in it]
        if missing:
            raise CaiError(f"train item {it.get('id', '?')!r}: missing field {missing[0]!r} — regenerate the train items")
        if it["id"] in seen:
            raise CaiError(f"train items: duplicate id {it['id']!r} — ids must be unique (generation is keyed by id)")
        seen.add(it["id"])
    gen = generate_fn or _default_generate
    rotate_fn = rotate_fn or _default_rotate
    max_new = int(cfg.data_max_new_tokens)
    keep_rp = bool(getattr(cfg, "pair_keep_if_rejected_passes", False))
    store = _Store(paths.generations)
    timing: dict = {}
    run = dict(loaded=loaded, gen=gen, rotate_fn=rotate_fn, cfg=cfg, max_new_tokens=max_new,
               progress=progress, timing=timing)

    pairs: list[dict] = []
    dropped: list[dict] = []
    _run_step("response", items, store, **run)
    answers = {it["id"]: _cut_answer(store.get(it["id"], "response"), "response") for it in items}
    fs = {it["id"]: {"response": store.get(it["id"], "response").get("fewshot_ids", [])} for it in items}

    if strategy in ("format_distillation", "self_consistency"):
        votes = {}
        if strategy == "self_consistency":
            _run_sample_step(items, store, loaded=loaded, sample_fn=sample_fn or _default_sample, cfg=cfg,
                             max_new_tokens=max_new, rotate_fn=rotate_fn, progress=progress, timing=timing)
        alive = []
        chosen_of = {}
        for it in items:
            greedy, g_fr = answers[it["id"]]
            if strategy == "self_consistency":
                cands = _candidates(it, greedy, g_fr, store.get(it["id"], "sample"))
                votes[it["id"]] = vote(it, cands)
                won = votes[it["id"]]["chosen"]
                if won is not None:
                    chosen_of[it["id"]] = (won["text"], won["fr"], won["score"])
                    alive.append(it)
                    continue
            score = _score(it, greedy, g_fr)
            reasons = _chosen_reasons(greedy, g_fr, score)
            if reasons:
                dropped.append(_drop(it, strategy, reasons, chosen=greedy, chosen_finish_reason=g_fr,
                                     failures=score["failures"]))
            else:
                chosen_of[it["id"]] = (greedy, g_fr, score)
                alive.append(it)
        _run_step("raw", alive, store, **run)
        for it in alive:
            chosen, fr, ch_score = chosen_of[it["id"]]
            raw = store.get(it["id"], "raw")
            rejected = raw["response"].strip()  # no cut: what evaluation sees
            extra = {"new_tokens": _new_tokens(store, it, STEPS[strategy])}
            if strategy == "self_consistency":
                extra["vote"] = _vote_record(votes[it["id"]])
            out = _make_pair(it, strategy, chosen, fr, ch_score, rejected, raw["finish_reason"],
                             fewshot=fs[it["id"]], extra=extra, keep_if_rejected_passes=keep_rp)
            if isinstance(out, tuple):
                dropped.append(_drop(it, strategy, out[1], chosen=chosen, rejected=rejected))
            else:
                pairs.append(out)
            if strategy == "self_consistency":
                for wrong in wrong_samples(votes[it["id"]], chosen, cfg.pair_sc_max_wrong,
                                           cfg.pair_sc_length_tolerance):
                    out = _make_pair(it, strategy, chosen, fr, ch_score, wrong["text"], wrong["fr"],
                                     fewshot=fs[it["id"]], extra={**extra, "rejected_source": wrong["source"]},
                                     keep_if_rejected_passes=False, pair_type="wrong_sample")
                    if isinstance(out, tuple):  # e.g. identical after whitespace: not a preference
                        dropped.append(_drop(it, strategy, out[1], chosen=chosen, rejected=wrong["text"]))
                    else:
                        pairs.append(out)
    else:
        alive = []
        for it in items:
            original, _ = answers[it["id"]]
            if not original:
                dropped.append(_drop(it, strategy, ["rejected_empty"], rejected=original))
            else:
                alive.append(it)
        _run_step("critique", alive, store, **run)
        _run_step("revision", alive, store, **run)
        for it in alive:
            original, o_fr = answers[it["id"]]
            critique, _ = _cut_answer(store.get(it["id"], "critique"), "critique")
            rev_row = store.get(it["id"], "revision")
            chosen, fr = _cut_answer(rev_row, "revision")
            score = _score(it, chosen, fr)
            reasons = _chosen_reasons(chosen, fr, score)
            if reasons:
                dropped.append(_drop(it, strategy, reasons, chosen=chosen, chosen_finish_reason=fr,
                                     rejected=original, critique=critique, failures=score["failures"]))
                continue
            ids = dict(fs[it["id"]])
            ids["critique"] = store.get(it["id"], "critique").get("fewshot_ids", [])
            ids["revision"] = rev_row.get("fewshot_ids", [])
            out = _make_pair(it, strategy, chosen, fr, score, original, o_fr, fewshot=ids,
                             extra={"critique": critique, "new_tokens": _new_tokens(store, it, STEPS[strategy])},
                             keep_if_rejected_passes=keep_rp, pair_type="revision")
            if isinstance(out, tuple):
                dropped.append(_drop(it, strategy, out[1], chosen=chosen, rejected=original, critique=critique))
            else:
                pairs.append(out)

    if getattr(cfg, "pair_balance", False):
        by_id = {it["id"]: it for it in items}
        pairs, removed = rebalance_pairs(pairs, items, tolerance=cfg.pair_balance_tolerance, seed=cfg.seed)
        dropped += [_drop(by_id[p["item_id"]], strategy, ["rebalanced"], chosen=p["chosen"], rejected=p["rejected"],
                          pair_type=p["pair_type"]) for p in removed]
    if any(not p["chosen"].strip() for p in pairs):  # the no-empty-chosen rule, checked once more at the end
        raise CaiError("internal error: a pair with an empty chosen answer was built — report this bug")
    for t in timing.values():  # throughput of what this call generated (resumed rows excluded)
        t["wall_s"] = round(t["wall_s"], 3)
        t["new_tokens_per_s"] = round(t["new_tokens"] / t["wall_s"], 2) if t["wall_s"] > 0 else None
    write_jsonl(paths.preference_pairs, [trl_record(p, cfg.chosen_leading_space) for p in pairs])
    write_json(paths.pair_stats, pair_diagnostics(pairs, dropped, generation=timing, items=items, cfg=cfg))
    return pairs, dropped


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
