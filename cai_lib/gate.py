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
"""

from __future__ import annotations

from .errors import CaiError

_REQUIRED = ("n", "base_rate", "trained_rate", "mcnemar_p", "b", "c")


def gate_verdict(stats: dict, *, target: float = 0.95, alpha: float = 0.01, leakage_clean: bool,
                 guard_held: bool, field: str = "strict") -> dict:
    """Judge `stats` (from `stats.stats_records`) against the Stage 1 conditions."""
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
    reasons = [c["unmet"] for c in conditions.values() if not c["met"]]
    if not conditions["base_below_target"]["met"]:
        verdict = "NO_GAP"
    elif reasons:
        verdict = "FAIL"
    else:
        verdict = "PASS"
    return {
        "verdict": verdict,
        "reasons": reasons,
        "conditions": {k: {kk: vv for kk, vv in c.items() if kk != "unmet"} for k, c in conditions.items()},
        "field": field,
        "target": float(target),
        "alpha": float(alpha),
        "n": int(stats["n"]),
    }
