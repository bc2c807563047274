"""The Stage 1 gate: may this adapter be approved as a Stage-1 instruction follower?

Verdicts:

* `PASS` — every condition holds: trained rate >= target, McNemar p < alpha with the
  trained model *above* the base (a significant drop must not pass), the base model
  was below the target on raw instructions, no eval item leaked into training or the
  few-shot bank, and the contamination guard held (stage 03 recorded guard evidence showing no chat
  template on the tokenizer it evaluated with; chat markers in a prompt stop generation).
* `NO_GAP` — the base model already reaches the target on raw instructions. This wins
  over every other outcome, because such an eval set cannot show that training taught
  anything: passing would approve an adapter for work the base already does, and
  failing would blame training for a test that could not measure it. The fix is a
  harder eval set, not another training run. The other unmet conditions are still
  listed in `reasons` so a leak or a broken guard is never hidden behind NO_GAP.
* `FAIL` — anything else; `reasons` lists every unmet condition, one sentence each.

Only PASS approves the adapter (the manifest and `cai run --strict` rely on that).

Reported condition — `beats_in_context`: the trained model on raw instructions beats the
base model with its best few-shot prompt on the same items (McNemar p < alpha, trained
above few-shot; stats from `arms.in_context_stats`). It is always evaluated and shown,
and required for PASS only when the profile sets `gate_require_in_context: true`. Not
required by default, because Stage 1 certifies something narrower: that the adapter
follows *raw* instructions at the target, significantly better than the raw base.
Later stages send raw instructions with no frame and no stop strings, so an adapter that
only matches the few-shot frame still does a job the frame cannot (it stops by itself,
costs no prompt tokens, needs no stop strings). And on eval sets of 100-300 items a
real but modest win over a strong few-shot arm is often not significant at alpha 0.01
(few discordant items): requiring it would fail adapters for lack of items, not of
quality. Whether training beats prompting is the scientific question of issue 12; the
report answers it in its verdict sentence whichever way it falls. A reported condition
that is unmet goes to `notes`, not `reasons`; a required one goes to `reasons`.
"""

from __future__ import annotations

from .errors import CaiError

_REQUIRED = ("n", "base_rate", "trained_rate", "mcnemar_p", "b", "c")


def gate_verdict(stats: dict, *, target: float = 0.95, alpha: float = 0.01, leakage_clean: bool,
                 guard_held: bool, field: str = "strict", in_context: dict | None = None,
                 require_in_context: bool = False) -> dict:
    """Judge `stats` (from `stats.stats_records`) against the Stage 1 conditions.

    `in_context`: trained-raw vs base-few-shot stats on the same items (one field's
    block of `arms.in_context_stats`), or None when the run has no few-shot arm.
    `require_in_context`: whether `beats_in_context` must hold for PASS (module docstring).
    """
    if not isinstance(stats, dict):
        raise CaiError("gate: stats must be the dict written by `cai stats` / results/stats.json")
    missing = [k for k in _REQUIRED if k not in stats]
    if missing:
        raise CaiError(f"gate: stats lacks {missing} — regenerate results/stats.json with `cai stats`")
    if "field" in stats and stats["field"] != field:
        raise CaiError(f"gate: stats were computed on {stats['field']!r} but the gate uses {field!r} — "
                       f"rerun `cai stats --field {field}` or set the profile's gate field to match")
    if not 0 < target <= 1:
        raise CaiError(f"gate: target must be in (0, 1], got {target}")
    if not 0 < alpha < 1:
        raise CaiError(f"gate: alpha must be in (0, 1), got {alpha}")
    for name, v in (("leakage_clean", leakage_clean), ("guard_held", guard_held)):
        if not isinstance(v, bool):
            raise CaiError(f"gate: {name} must be true or false, got {v!r}")

    if not isinstance(require_in_context, bool):
        raise CaiError(f"gate: require_in_context must be true or false, got {require_in_context!r}")
    ic = _in_context_condition(in_context, alpha=alpha, field=field, required=require_in_context)

    base, trained, p = float(stats["base_rate"]), float(stats["trained_rate"]), float(stats["mcnemar_p"])
    lift_up = trained > base
    conditions = {
        "trained_at_target": {
            "value": trained, "required": f">= {target:g}", "met": trained >= target,
            "unmet": f"trained {field} rate {trained:.3f} is below the target {target:g}"},
        "significant_lift": {
            "value": p, "required": f"McNemar p < {alpha:g} with trained > base",
            "met": p < alpha and lift_up,
            "unmet": (f"McNemar p = {p:.3g} is not below {alpha:g}" if lift_up else
                      f"trained {field} rate {trained:.3f} is not above base {base:.3f} "
                      f"(b={stats['b']} base-only passes, c={stats['c']} trained-only passes)")},
        "base_below_target": {
            "value": base, "required": f"< {target:g}", "met": base < target,
            "unmet": (f"base {field} rate {base:.3f} already reaches the target {target:g} on raw "
                      "instructions: nothing to teach — use a harder eval set")},
        "no_leakage": {
            "value": leakage_clean, "required": True, "met": leakage_clean,
            "unmet": "eval items leak into the training data or few-shot bank (see data/overlap_report.json)"},
        "guard_held": {
            "value": guard_held, "required": True, "met": guard_held,
            "unmet": ("no guard evidence shows the evaluated model free of a chat template (stage 03 records "
                      "guard.guard_report in the manifest) — rerun stage 03")},
    }
    if ic is not None:  # a run without the few-shot arm reports nothing about it unless required
        conditions["beats_in_context"] = ic
    for c in conditions.values():
        c.setdefault("required_for_pass", True)
    reasons = [c["unmet"] for c in conditions.values() if not c["met"] and c["required_for_pass"]]
    notes = [c["unmet"] for c in conditions.values() if not c["met"] and not c["required_for_pass"]]
    if not conditions["base_below_target"]["met"]:
        verdict = "NO_GAP"
    elif reasons:
        verdict = "FAIL"
    else:
        verdict = "PASS"
    return {
        "verdict": verdict,
        "reasons": reasons,
        "notes": notes,
        "conditions": {k: {kk: vv for kk, vv in c.items() if kk != "unmet"} for k, c in conditions.items()},
        "field": field,
        "target": float(target),
        "alpha": float(alpha),
        "n": int(stats["n"]),
    }


def _in_context_condition(ic: dict | None, *, alpha: float, field: str, required: bool) -> dict | None:
    """The `beats_in_context` condition: met when McNemar p < alpha with trained above few-shot."""
    if ic is None:
        if not required:
            return None
        return {"value": None, "required": f"McNemar p < {alpha:g} with trained raw > base few-shot",
                "met": False, "required_for_pass": required,
                "unmet": "no in-context (base few-shot) arm was evaluated — rerun stage 03 to add it"}
    if not isinstance(ic, dict) or any(k not in ic for k in ("base_rate", "trained_rate", "mcnemar_p", "b", "c")):
        raise CaiError("gate: in_context must be one field's block of arms.in_context_stats "
                       "(base_rate, trained_rate, mcnemar_p, b, c) — regenerate stats.json")
    if "field" in ic and ic["field"] != field:
        raise CaiError(f"gate: in-context stats were computed on {ic['field']!r} but the gate uses {field!r} — "
                       "pass the block for the gate's field")
    fs, tr, p = float(ic["base_rate"]), float(ic["trained_rate"]), float(ic["mcnemar_p"])
    up = tr > fs
    unmet = (f"trained raw {field} {tr:.3f} is above base few-shot {fs:.3f} but McNemar p = {p:.3g} is not "
             f"below {alpha:g}" if up else
             f"trained raw {field} {tr:.3f} does not beat the base model's few-shot prompt {fs:.3f} on the same "
             f"items (b={ic['b']} few-shot-only, c={ic['c']} trained-only passes)")
    return {"value": {"trained_rate": tr, "fewshot_rate": fs, "mcnemar_p": p},
            "required": f"McNemar p < {alpha:g} with trained raw > base few-shot", "met": p < alpha and up,
            "required_for_pass": required, "unmet": unmet}


# ---------------------------------------------------------------------------------------
# stage 04: the run's statistics, its verdict, and the adapter's approval
# ---------------------------------------------------------------------------------------

FIELDS = ("strict", "loose", "form")


def guard_held(run_dir) -> bool:
    """The gate's guard condition, from the evidence stage 03 recorded when it loaded the
    model it evaluated (guard.guard_report). Held only when that evidence exists and shows
    no chat template left on the tokenizer; missing evidence (stage 03 never finished, or
    an older version did not record it) is not held. Chat markers in prompts cannot pass
    silently: guard.check_prompts raises before generation, so stage 03 could not finish."""
    from . import manifest
    g = manifest.load(run_dir).get("stages", {}).get("03", {}).get("guard")
    return isinstance(g, dict) and g.get("chat_template_now") is False and bool(g.get("chat_markers_checked"))


def run_gate(run_dir, cfg, base: list[dict], trained: list[dict]) -> dict:
    """Stage 04's judgement, nothing written: paired stats per success field, the in-context
    block (trained raw vs the base model's few-shot prompt, same items) and the verdict.
    Returns {"all_stats", "in_context", "gate"}."""
    from .arms import gate_kwargs, stats_fields
    from .jsonl import read_json
    from .split import report_is_clean
    from .runs import run_paths
    from .stats import stats_records
    paths = run_paths(run_dir)
    all_stats = {f: stats_records(base, trained, field=f, seed=cfg.seed, n_bootstrap=cfg.n_bootstrap,
                                  alpha=cfg.gate_alpha)
                 for f in FIELDS}
    in_context = stats_fields(paths, cfg)
    gate = gate_verdict(all_stats[cfg.gate_field], target=cfg.gate_target, alpha=cfg.gate_alpha,
                        leakage_clean=report_is_clean(read_json(paths.overlap_report)),
                        guard_held=guard_held(run_dir), field=cfg.gate_field, **gate_kwargs(in_context, cfg))
    return {"all_stats": all_stats, "in_context": in_context, "gate": gate}


def record_gate(run_dir, cfg, judged: dict) -> None:
    """Write results/stats.json and gate.json, and approve the adapter in the manifest only
    on PASS (`manifest.stage1_adapter` and `cai run --strict` rely on that)."""
    from . import manifest
    from .jsonl import write_json
    from .runs import run_paths
    paths = run_paths(run_dir)
    write_json(paths.stats, {"gate_field": cfg.gate_field, **judged["all_stats"], **judged["in_context"]})
    write_json(paths.gate, judged["gate"])
    verdict = judged["gate"]["verdict"]
    manifest.update(run_dir, approval={"adapter_approved": verdict == "PASS", "verdict": verdict})
