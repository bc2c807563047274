"""The third evaluation arm: the base model with its best few-shot prompt, same items.

Question it answers (issue 12): does DPO training beat what the base model already does
when it is *prompted* well (URIAL: a few in-context examples make base models match their
instruction-tuned versions)? Base raw vs trained raw cannot say; an in-context row on a
different item set cannot either. So stage 03 runs three arms on the *same* held-out
items, in the same order:

* base raw      — the instruction exactly (eval_base.jsonl)
* base few-shot — the data stage's response frame: `n_fewshot` solved examples of the
  item's type, then the instruction (eval_base_fewshot.jsonl)
* trained raw   — the instruction exactly, adapter on (eval_trained.jsonl)

The few-shot arm is the base model at its best, not a straw man: it uses the frame and
the stop strings the data stage uses (a blank line or a new "Instruction:" ends the
answer — how anyone deploying few-shot prompting stops it), greedy decoding, the same
`eval_max_new_tokens` and batch size, and the same scoring contract (cai_lib.scoring:
a frame stop counts as the model having stopped, as `pairs` treats it). Its examples
come from the few-shot bank, rotated per item with a seeded RNG; the leakage guard has
already checked every bank instruction against the eval set (stage 03 refuses a leaking
set), and `rotate_excluding` never shows an item its own instruction. The ids of the
examples shown are stored on each record.

Display helpers return pandas DataFrames / dicts for the notebooks; `stats_fields` is the
block stage 04 adds to stats.json.
"""

from __future__ import annotations

from functools import partial

from typing import Sequence

from . import prompts, scoring
from .errors import CaiError
from .text import plain_key

ARMS = ("base", "base_fewshot", "trained")
ARM_LABELS = {"base": "base · raw", "base_fewshot": "base · few-shot", "trained": "trained · raw"}
FIELDS = ("strict", "loose", "form")
RNG_STEP = "eval_fewshot"  # few-shot rotation key; distinct from the data stage's "response"


def fewshot_requests(items: Sequence[dict], cfg, rotate_fn=None) -> list[tuple[str, list[str]]]:
    """(few-shot prompt, example ids) per item, in item order (seeded per item id)."""
    if rotate_fn is None:
        from .fewshot import rotate as rotate_fn
    out = []
    for it in items:
        examples = prompts.rotate_excluding(rotate_fn, it["type"], "response", cfg.n_fewshot,
                                            prompts.item_rng(cfg.seed, it["id"], RNG_STEP), it["instruction"])
        out.append((prompts.response_frame(it["instruction"], examples), prompts.fewshot_ids(examples)))
    return out


def check_no_eval_examples(items: Sequence[dict], requests: Sequence[tuple[str, list[str]]]) -> None:
    """Belt and braces: no example shown may be any eval item's instruction (normalised).

    The leakage guard already refuses near-duplicates between the bank and the eval set;
    this catches a custom rotate_fn or bank that bypasses it. The examples are read back
    from the frame itself ("Instruction: ..." blocks before the last), so what is checked
    is exactly what the model sees."""
    evals = {plain_key(it["instruction"]): it["id"] for it in items}
    for it, (prompt, _ids) in zip(items, requests):
        for block in prompt.split("\n\n")[:-1]:
            if not block.startswith("Instruction: "):
                continue
            hit = evals.get(plain_key(block.split("\n", 1)[0][len("Instruction: "):]))
            if hit is not None:
                raise CaiError(f"few-shot arm: item {it['id']!r} would be shown eval item {hit!r} as an example — "
                               "remove it from the few-shot bank (cai_lib/fewshot.py)", exit_code=2)


def generate_fewshot(model, tokenizer, items: Sequence[dict], cfg, *, progress: bool = True,
                     generate_fn=None, rotate_fn=None) -> tuple[list[dict], dict]:
    """The base model (adapters.base_view: adapter switched off, or not yet merged) on `items` with
    the few-shot frame; scored records.

    Records keep the item's raw `instruction` (so they pair with the other arms by id and
    instruction) plus `format`, `fewshot_ids`, `prompt_chars`. Returns (records, timing).
    """
    import time

    from .adapters import base_view
    from .generate import generate as _generate
    generate = generate_fn or partial(_generate, cache=cfg.gen_cache)
    requests = fewshot_requests(items, cfg, rotate_fn)
    check_no_eval_examples(items, requests)
    stops = prompts.stop_strings("response")
    t0 = time.time()
    with base_view(model):
        outs = generate(model, tokenizer, [p for p, _ in requests], max_new_tokens=cfg.eval_max_new_tokens,
                        batch_size=cfg.gen_batch_size, stop=stops, progress=progress, desc="base few-shot")
    if len(outs) != len(items):
        raise CaiError(f"generate returned {len(outs)} records for {len(items)} prompts — a bug in generate")
    recs = []
    for it, (prompt, ids), o in zip(items, requests, outs):
        text, hit = prompts.cut_at_stop(o["response"], stops)  # idempotent: generate already cut
        fr = "stop" if hit else o["finish_reason"]
        recs.append({**it, **o, "response": text.strip(), "finish_reason": fr, "model": "base_fewshot",
                     "format": "few_shot", "fewshot_ids": ids, "prompt_chars": len(prompt)})
    timing = {"base_fewshot_seconds": round(time.time() - t0, 2),
              "base_fewshot_new_tokens": sum(int(o.get("new_tokens") or 0) for o in outs)}
    return scoring.score_records(recs, "base few-shot"), timing


def decoding_plan(cfg) -> dict:
    return {"format": "few_shot (the data stage's response frame)", "n_fewshot": cfg.n_fewshot,
            "stop_strings": prompts.stop_strings("response"), "do_sample": False,
            "max_new_tokens": cfg.eval_max_new_tokens, "batch_size": cfg.gen_batch_size,
            "rotation": f"seeded per item: item_rng(seed, id, {RNG_STEP!r})"}


def check_paired(base: Sequence[dict], fewshot: Sequence[dict], trained: Sequence[dict]) -> None:
    """The three arms hold the same items in the same order (ids and instructions match)."""
    ids = [[r.get("id") for r in arm] for arm in (base, fewshot, trained)]
    if not (ids[0] == ids[1] == ids[2]):
        raise CaiError("the three evaluation arms do not hold the same items in the same order — rerun stage 03")
    for b, f, t in zip(base, fewshot, trained):
        if not (b.get("instruction") == f.get("instruction") == t.get("instruction")):
            raise CaiError(f"item {b.get('id')!r}: the arms saw different instructions — rerun stage 03")


# ---- statistics -----------------------------------------------------------------------------

def in_context_stats(fewshot: Sequence[dict], trained: Sequence[dict], cfg, fields=FIELDS) -> dict:
    """Paired trained-raw vs base-few-shot statistics per success field (cai_lib.stats).

    In each block "base_*" is the few-shot arm and "trained_*" the trained model on raw
    instructions; `diff` is trained − few-shot, `b` few-shot-only passes, `c` trained-only.
    """
    from .stats import stats_records
    out = {}
    for f in fields:
        s = stats_records(fewshot, trained, field=f, seed=cfg.seed, n_bootstrap=cfg.n_bootstrap,
                          alpha=cfg.gate_alpha, base_name="base_fewshot", trained_name="trained")
        s["arms"] = {"base": "base_fewshot", "trained": "trained"}
        out[f] = s
    return out


def verdict(stats: dict, alpha: float) -> dict:
    """Did training beat, match or lose to in-context prompting? (McNemar at alpha, as the gate.)

    `stats` is one field's block of `in_context_stats`. "matched" means no significant
    difference at this alpha — not proof of equality; the interval says how close."""
    p, d = float(stats["mcnemar_p"]), float(stats["diff"])
    if p < alpha and d > 0:
        outcome, word = "beat", "beat"
    elif p < alpha and d < 0:
        outcome, word = "lost", "lost to"
    else:
        outcome, word = "matched", "did not differ significantly from"
    lo, hi = stats["diff_ci"]
    f = stats.get("field", "strict")
    sentence = (f"Training {word} in-context prompting: trained raw {f} {stats['trained_rate']:.2f} vs base "
                f"few-shot {stats['base_rate']:.2f} on the same {stats['n']} items (difference {d:+.2f}, "
                f"95% CI [{lo:+.2f}, {hi:+.2f}]; McNemar p = {p:.2g}, alpha {alpha:g}; "
                f"b = {stats['b']} few-shot-only, c = {stats['c']} trained-only passes).")
    return {"outcome": outcome, "sentence": sentence, "field": f, "diff": d, "diff_ci": [lo, hi], "mcnemar_p": p,
            "alpha": float(alpha), "trained_rate": stats["trained_rate"], "fewshot_rate": stats["base_rate"],
            "n": stats["n"]}


def load_arms(paths) -> dict:
    """The three arms' scored records from a run's results folder (few-shot may be absent
    in a run made before the arm existed: then it is left out, and stats say so)."""
    from .jsonl import read_jsonl
    out = {}
    for arm, p in (("base", paths.eval_base), ("base_fewshot", paths.eval_fewshot), ("trained", paths.eval_trained)):
        if p.exists():
            out[arm] = read_jsonl(p)
        elif arm != "base_fewshot":
            raise CaiError(f"{p}: missing — run stage 03 first (cai run --stages 03)")
    return out


def stats_fields(paths, cfg) -> dict:
    """The block stage 04 merges into results/stats.json: in-context paired stats per field,
    the one-sentence verdict (on cfg.gate_field), and the answer skew of each arm."""
    from .diagnostics import eval_skew
    arms = load_arms(paths)
    skew = eval_skew({a: arms[a] for a in ("base_fewshot", "trained") if a in arms}, threshold=cfg.skew_threshold)
    if "base_fewshot" not in arms:
        return {"in_context": None, "in_context_verdict": None, "answer_skew": skew,
                "in_context_note": f"{paths.eval_fewshot.name} missing: rerun stage 03 to add the few-shot arm"}
    check_paired(arms["base"], arms["base_fewshot"], arms["trained"])
    ic = in_context_stats(arms["base_fewshot"], arms["trained"], cfg)
    return {"in_context": ic, "in_context_verdict": verdict(ic[cfg.gate_field], cfg.gate_alpha),
            "answer_skew": skew}


# ---- display --------------------------------------------------------------------------------

def three_arm_rates_frame(arms: dict, by_type: bool = True):
    """Rate and Wilson 95% interval per arm and success field, overall ("all") and per type."""
    import pandas as pd

    from .stats import wilson
    rows = []
    for arm in ARMS:
        recs = arms.get(arm)
        if not recs:
            continue
        groups = {"all": recs}
        if by_type:
            for t in sorted({str(r.get("type")) for r in recs}):
                groups[t] = [r for r in recs if str(r.get("type")) == t]
        for g, rs in groups.items():
            row = {"arm": ARM_LABELS[arm], "type": g, "n": len(rs)}
            for f in FIELDS:
                k = sum(bool(r[f]) for r in rs)
                lo, hi = wilson(k, len(rs))
                row[f] = round(k / len(rs), 3)
                row[f"{f}_ci"] = f"[{lo:.2f}, {hi:.2f}]"
            rows.append(row)
    return pd.DataFrame(rows)


def in_context_frame(ic: dict, field: str = "strict"):
    """Trained raw vs base few-shot, overall and per type, for one success field."""
    import pandas as pd
    s = ic[field]
    rows = [("all", s)] + sorted(s.get("by_type", {}).items())
    return pd.DataFrame([{
        "type": t, "n": x["n"], "few_shot": round(x["base_rate"], 3), "trained_raw": round(x["trained_rate"], 3),
        "diff": round(x["diff"], 3), "diff_ci": f"[{x['diff_ci'][0]:+.2f}, {x['diff_ci'][1]:+.2f}]",
        "diff_ci_bootstrap": f"[{x['diff_ci_bootstrap'][0]:+.2f}, {x['diff_ci_bootstrap'][1]:+.2f}]",
        "b_fewshot_only": x["b"], "c_trained_only": x["c"], "mcnemar_p": float(f"{x['mcnemar_p']:.3g}"),
        "mcnemar_p_bh": float(f"{x['mcnemar_p_bh']:.3g}") if "mcnemar_p_bh" in x else None,
        "cohens_h": round(x["cohens_h"], 3)} for t, x in rows])


def gate_kwargs(block: dict, cfg) -> dict:
    """The gate's in-context arguments from `stats_fields`' block (None when the arm is missing)."""
    ic = block.get("in_context")
    return {"in_context": ic[cfg.gate_field] if ic else None, "require_in_context": cfg.gate_require_in_context}


def verdict_html(block: dict):
    """The one-sentence in-context verdict as a small coloured box (for 04_report)."""
    from html import escape

    from IPython.display import HTML
    v = block.get("in_context_verdict")
    if not v:
        return HTML(f"<p>{escape(block.get('in_context_note', 'no in-context arm'))}</p>")
    color = {"beat": "#1a7f37", "matched": "#9a6700", "lost": "#cf222e"}[v["outcome"]]
    return HTML(f'<div style="border-left:6px solid {color};padding:6px 10px">{escape(v["sentence"])}</div>')
