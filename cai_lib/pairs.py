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

Here: the strategies (one function each) and pair assembly. The generation steps are
cai_lib.pair_generation, the self_consistency vote cai_lib.pair_vote, and the measures and
data/pair_stats.json cai_lib.pair_stats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .diagnostics import rebalance_pairs
from .errors import CaiError
from .jsonl import write_json, write_jsonl
from functools import partial

from .pair_generation import (GenerationStore, cut_answer, default_generate, default_rotate, default_sample,
                              prompts_per_sample_call, run_sample_step, run_step, score_answer)
from .pair_stats import REASONS, count_words, is_eos_immediately, length_only_kind, pair_diagnostics, word_edit_distance
from .pair_vote import candidates, vote, vote_record, wrong_samples
from .text import squash_spaces

STRATEGIES = ("format_distillation", "critique_revision", "self_consistency")
# Steps are named by what they generate, not by strategy, so both strategies share the
# "response" step's rows when a run switches strategy.
STEPS = {
    "format_distillation": ("response", "raw"),
    "critique_revision": ("response", "critique", "revision"),
    "self_consistency": ("response", "sample", "raw"),
}
PAIR_TYPES = ("raw_continuation", "revision", "wrong_sample", "empty_rejected")


# ---- pair assembly ----------------------------------------------------------------------

def _new_tokens(store: GenerationStore, item: dict, steps) -> dict:
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


def _make_pair(item, strategy, chosen, ch_fr, ch_score, rejected, rj_fr, *, fewshot, extra,
               keep_if_rejected_passes=False, pair_type="raw_continuation") -> dict | tuple:
    reasons = []
    if not chosen.strip():  # never: callers drop chosen_empty first; a pair must not teach silence
        raise CaiError(f"item {item['id']!r}: internal error — an empty answer reached a pair as chosen")
    if is_eos_immediately(rejected, rj_fr):
        pair_type = "empty_rejected"  # stopping at once (no word written) is the failure this pair shows
    elif not rejected.strip():
        reasons.append("rejected_empty")
    elif squash_spaces(chosen) == squash_spaces(rejected):
        reasons.append("identical")
    if reasons:
        return ("drop", reasons)
    rj_score = score_answer(item, rejected, rj_fr)
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
    from .pair_tokens import completion_text
    return {**pair, "chosen": completion_text(pair["prompt"], pair["chosen"], leading_space),
            "rejected": completion_text(pair["prompt"], pair["rejected"], leading_space),
            "chosen_answer": pair["chosen"], "rejected_answer": pair["rejected"]}


@dataclass
class _Build:
    """One build_pairs call: the generations so far, the settings, and the pairs / drops made."""
    strategy: str
    items: list
    cfg: Any
    store: GenerationStore
    run: dict  # run_step's keyword arguments
    answers: dict = field(default_factory=dict)  # item id -> the response step's (cut answer, finish_reason)
    fewshot: dict = field(default_factory=dict)  # item id -> few-shot ids per step
    pairs: list = field(default_factory=list)
    dropped: list = field(default_factory=list)

    @property
    def keep_if_rejected_passes(self) -> bool:
        return bool(getattr(self.cfg, "pair_keep_if_rejected_passes", False))

    def add(self, item: dict, out, **drop_fields) -> None:
        """A pair from `_make_pair`, or its drop (with `drop_fields` for the report)."""
        if isinstance(out, tuple):
            self.dropped.append(_drop(item, self.strategy, out[1], **drop_fields))
        else:
            self.pairs.append(out)


def _greedy_chosen(b: _Build, item: dict):
    """(chosen, finish_reason, score) from the framed greedy answer, or None (drop recorded)."""
    greedy, g_fr = b.answers[item["id"]]
    score = score_answer(item, greedy, g_fr)
    reasons = _chosen_reasons(greedy, g_fr, score)
    if reasons:
        b.dropped.append(_drop(item, b.strategy, reasons, chosen=greedy, chosen_finish_reason=g_fr,
                               failures=score["failures"]))
        return None
    return greedy, g_fr, score


def _raw_continuation_pair(b: _Build, item: dict, chosen: tuple, extra: dict) -> None:
    """chosen against the raw instruction's continuation, uncut: what evaluation sees."""
    text, fr, score = chosen
    raw = b.store.get(item["id"], "raw")
    rejected = raw["response"].strip()
    b.add(item, _make_pair(item, b.strategy, text, fr, score, rejected, raw["finish_reason"],
                           fewshot=b.fewshot[item["id"]], extra=extra,
                           keep_if_rejected_passes=b.keep_if_rejected_passes),
          chosen=text, rejected=rejected)


def _format_distillation(b: _Build) -> None:
    """chosen = the framed greedy answer; rejected = the raw continuation."""
    chosen_of = {}
    for it in b.items:
        chosen = _greedy_chosen(b, it)
        if chosen is not None:
            chosen_of[it["id"]] = chosen
    alive = [it for it in b.items if it["id"] in chosen_of]
    run_step("raw", alive, b.store, **b.run)
    for it in alive:
        _raw_continuation_pair(b, it, chosen_of[it["id"]],
                               {"new_tokens": _new_tokens(b.store, it, STEPS[b.strategy])})


def _self_consistency(b: _Build, sample_fn: Callable) -> None:
    """chosen = the voted verified answer (else the greedy one); rejected = the raw
    continuation, plus up to pair_sc_max_wrong verified-wrong samples."""
    r = b.run
    run_sample_step(b.items, b.store, loaded=r["loaded"], sample_fn=sample_fn, cfg=b.cfg,
                    max_new_tokens=r["max_new_tokens"], rotate_fn=r["rotate_fn"], progress=r["progress"],
                    timing=r["timing"])
    votes, chosen_of = {}, {}
    for it in b.items:
        greedy, g_fr = b.answers[it["id"]]
        votes[it["id"]] = vote(it, candidates(it, greedy, g_fr, b.store.get(it["id"], "sample")))
        won = votes[it["id"]]["chosen"]
        chosen = (won["text"], won["fr"], won["score"]) if won is not None else _greedy_chosen(b, it)
        if chosen is not None:
            chosen_of[it["id"]] = chosen
    alive = [it for it in b.items if it["id"] in chosen_of]
    run_step("raw", alive, b.store, **b.run)
    for it in alive:
        chosen, fr, ch_score = chosen_of[it["id"]]
        extra = {"new_tokens": _new_tokens(b.store, it, STEPS[b.strategy]), "vote": vote_record(votes[it["id"]])}
        _raw_continuation_pair(b, it, chosen_of[it["id"]], extra)
        for wrong in wrong_samples(votes[it["id"]], chosen, b.cfg.pair_sc_max_wrong, b.cfg.pair_sc_length_tolerance):
            out = _make_pair(it, b.strategy, chosen, fr, ch_score, wrong["text"], wrong["fr"],
                             fewshot=b.fewshot[it["id"]], extra={**extra, "rejected_source": wrong["source"]},
                             keep_if_rejected_passes=False, pair_type="wrong_sample")
            b.add(it, out, chosen=chosen, rejected=wrong["text"])  # e.g. identical after whitespace: dropped


def _critique_revision(b: _Build) -> None:
    """chosen = the revision of the framed answer after its critique; rejected = that answer."""
    alive = []
    for it in b.items:
        original, _ = b.answers[it["id"]]
        if not original:
            b.dropped.append(_drop(it, b.strategy, ["rejected_empty"], rejected=original))
        else:
            alive.append(it)
    run_step("critique", alive, b.store, **b.run)
    run_step("revision", alive, b.store, **b.run)
    for it in alive:
        original, o_fr = b.answers[it["id"]]
        critique, _ = cut_answer(b.store.get(it["id"], "critique"), "critique")
        rev_row = b.store.get(it["id"], "revision")
        chosen, fr = cut_answer(rev_row, "revision")
        score = score_answer(it, chosen, fr)
        reasons = _chosen_reasons(chosen, fr, score)
        if reasons:
            b.dropped.append(_drop(it, b.strategy, reasons, chosen=chosen, chosen_finish_reason=fr,
                                   rejected=original, critique=critique, failures=score["failures"]))
            continue
        ids = dict(b.fewshot[it["id"]])
        ids["critique"] = b.store.get(it["id"], "critique").get("fewshot_ids", [])
        ids["revision"] = rev_row.get("fewshot_ids", [])
        out = _make_pair(it, b.strategy, chosen, fr, score, original, o_fr, fewshot=ids,
                         extra={"critique": critique, "new_tokens": _new_tokens(b.store, it, STEPS[b.strategy])},
                         keep_if_rejected_passes=b.keep_if_rejected_passes, pair_type="revision")
        b.add(it, out, chosen=chosen, rejected=original, critique=critique)


def _check_items(items: list) -> None:
    seen = set()
    for it in items:
        missing = [k for k in ("id", "type", "instruction", "checks") if k not in it]
        if missing:
            raise CaiError(f"train item {it.get('id', '?')!r}: missing field {missing[0]!r} — regenerate the train items")
        if it["id"] in seen:
            raise CaiError(f"train items: duplicate id {it['id']!r} — ids must be unique (generation is keyed by id)")
        seen.add(it["id"])


def _rebalance(b: _Build) -> None:
    """cfg.pair_balance: drop pairs (seeded, reason "rebalanced") until no answer class is over-represented."""
    by_id = {it["id"]: it for it in b.items}
    b.pairs, removed = rebalance_pairs(b.pairs, b.items, tolerance=b.cfg.pair_balance_tolerance, seed=b.cfg.seed)
    b.dropped += [_drop(by_id[p["item_id"]], b.strategy, ["rebalanced"], chosen=p["chosen"], rejected=p["rejected"],
                        pair_type=p["pair_type"]) for p in removed]


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
    _check_items(items)
    timing: dict = {}
    b = _Build(strategy, items, cfg, GenerationStore(paths.generations),
               dict(loaded=loaded, gen=generate_fn or partial(default_generate, cache=cfg.gen_cache), rotate_fn=rotate_fn or default_rotate, cfg=cfg,
                    max_new_tokens=int(cfg.data_max_new_tokens), progress=progress, timing=timing))
    run_step("response", items, b.store, **b.run)
    b.answers = {it["id"]: cut_answer(b.store.get(it["id"], "response"), "response") for it in items}
    b.fewshot = {it["id"]: {"response": b.store.get(it["id"], "response").get("fewshot_ids", [])} for it in items}
    if strategy == "format_distillation":
        _format_distillation(b)
    elif strategy == "self_consistency":
        # a static cache pads every sampling call to the same rows (prompts per call x k)
        rows = prompts_per_sample_call(cfg) * int(cfg.pair_sc_k)
        _self_consistency(b, sample_fn or partial(default_sample, cache=cfg.gen_cache, batch_rows=rows))
    else:
        _critique_revision(b)
    if getattr(cfg, "pair_balance", False):
        _rebalance(b)
    if any(not p["chosen"].strip() for p in b.pairs):  # the no-empty-chosen rule, checked once more at the end
        raise CaiError("internal error: a pair with an empty chosen answer was built — report this bug")
    for t in timing.values():  # throughput of what this call generated (resumed rows excluded)
        t["wall_s"] = round(t["wall_s"], 3)
        t["new_tokens_per_s"] = round(t["new_tokens"] / t["wall_s"], 2) if t["wall_s"] > 0 else None
    write_jsonl(paths.preference_pairs, [trl_record(p, cfg.chosen_leading_space) for p in b.pairs])
    write_json(paths.pair_stats, pair_diagnostics(b.pairs, b.dropped, generation=timing, items=items, cfg=cfg))
    return b.pairs, b.dropped
