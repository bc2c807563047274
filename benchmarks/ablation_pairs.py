"""Pair-construction ablation (issue 12 item 5): today's pairs vs balanced vs self-consistency.

Variants, all with the same items, seed and training settings:

    format_distillation       chosen = greedy few-shot answer, rejected = raw continuation (today)
    balanced                  the same pairs, rebalanced by answer class (pair_balance)
    self_consistency          k sampled few-shot answers vote; verified-wrong samples as extra rejected
    self_consistency+balanced both

One run folder: stage 01's split (split.write_split) and one generations store shared by
every variant (the greedy "response" and "raw" steps are generated once; self_consistency
adds only the samples). Each variant trains an adapter (train.train_dpo, resumable), then
is evaluated as stage 03 does: base raw and base few-shot once (the base model's outputs
do not depend on the variant), trained raw per variant, all on the same held-out items.
Reported per variant: pair figures (pairs, keep-rate, share_chosen_shorter, share
length-matched, pair correctness, skew flag), strict/loose/form, EOS rate, yes/no accuracy
and share of "yes" vs the true share, and trained-raw vs base-few-shot paired stats.

    python benchmarks/ablation_pairs.py --out RUN_FOLDER [--n-train N] [--n-eval N] [--k K]
        [--max-steps N] [--variants a,b] [--json benchmarks/results/ablation_pairs_cpu.json]

Without options every setting is the run configuration's default, i.e. the cpu-quick profile.

The JSON is rewritten after every variant, so a run cut short keeps what finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "format_distillation": dict(pair_strategy="format_distillation", pair_balance=False),
    "balanced": dict(pair_strategy="format_distillation", pair_balance=True),
    "self_consistency": dict(pair_strategy="self_consistency", pair_balance=False),
    "self_consistency+balanced": dict(pair_strategy="self_consistency", pair_balance=True),
}


def arm_summary(scored: list[dict], threshold: float) -> dict:
    from cai_lib.diagnostics import answer_skew
    n = len(scored)
    yn = answer_skew(scored, threshold=threshold)["by_kind"].get("yes_no", {})
    return {"n": n, **{f: round(sum(bool(r[f]) for r in scored) / n, 4) for f in ("strict", "loose", "form")},
            "eos_rate": round(sum(r["finish_reason"] == "eos" for r in scored) / n, 4),
            "empty": sum(1 for r in scored if "empty" in r.get("failures", [])),
            "yes_no_n": yn.get("n"), "yes_no_accuracy": yn.get("accuracy"), "yes_share": yn.get("yes_share"),
            "true_yes_share": yn.get("true_yes_share"), "skew_flagged": yn.get("flagged")}


def pair_summary(stats: dict) -> dict:
    keep = {s: v["keep_rate_items"] for s, v in stats["by_strategy"].items()}
    return {"n_pairs": stats["n_kept"], "keep_rate_items": keep, "pair_correct": stats["pair_correct"],
            "share_chosen_shorter": stats["share_chosen_shorter"], "share_length_matched": stats["share_length_matched"],
            "pair_types": {t: {k: v[k] for k in ("n", "share_chosen_shorter", "share_length_matched", "pair_correct")}
                           for t, v in stats["pair_types"].items()},
            "skew_flagged": stats["skew_flagged"],
            "chosen_yes_share_vs_pool": stats["answer_skew"]["chosen_vs_pool"]["by_kind"].get("yes_no", {}).get(
                "kept_shares"),
            "rebalanced_away": (stats.get("balance") or {}).get("dropped"), "vote": stats.get("vote")}


def vs(a: list[dict], b: list[dict], cfg, field="strict") -> dict:
    """Paired stats of trained (b) against an arm (a) on the same items."""
    from cai_lib.stats import stats_records
    s = stats_records(a, b, field=field, seed=cfg.seed, n_bootstrap=cfg.n_bootstrap, alpha=cfg.gate_alpha)
    return {k: s[k] for k in ("n", "base_rate", "trained_rate", "b", "c", "diff", "diff_ci", "mcnemar_p")}


def run(out: Path, cfg, names: list[str], json_path: Path, progress: bool) -> dict:
    from cai_lib import pairs as pairs_mod
    from cai_lib import split, train
    from cai_lib.adapters import load_adapter
    from cai_lib.arms import generate_fewshot
    from cai_lib.generate import generate
    from cai_lib.jsonl import write_json
    from cai_lib.models import load_configured
    from cai_lib.runs import run_paths
    from cai_lib.scoring import score_records

    paths = run_paths(out)
    train_items, eval_items, _ = split.write_split(paths, cfg)
    loaded = load_configured(cfg, purpose="train")
    result = {"machine": f"{platform.machine()} CPU, {__import__('os').cpu_count()} cores (shared)",
              "config": {k: getattr(cfg, k) for k in ("model", "seed", "n_train_items", "n_eval_items",
                                                      "data_max_new_tokens", "eval_max_new_tokens", "pair_sc_k",
                                                      "pair_sc_temperature", "pair_sc_max_wrong", "max_steps",
                                                      "per_device_batch_size", "learning_rate", "beta", "loss_type",
                                                      "lora_r", "n_fewshot", "gen_batch_size", "num_epochs")},
              "n_train": len(train_items), "n_eval": len(eval_items), "variants": {}, "arms": {}}
    base_raw = base_fs = None
    for name in names:
        vcfg = dataclasses.replace(cfg, **VARIANTS[name])
        vdir = out / "ablation" / name
        vpaths = SimpleNamespace(generations=paths.generations, preference_pairs=vdir / "preference_pairs.jsonl",
                                 pair_stats=vdir / "pair_stats.json")
        t0 = time.perf_counter()
        kept, _ = pairs_mod.build_pairs(loaded, train_items, vcfg, vpaths, progress=progress)
        pair_s = time.perf_counter() - t0
        stats = json.loads(vpaths.pair_stats.read_text())
        t0 = time.perf_counter()
        summary = train.train_dpo(loaded, vpaths.preference_pairs, vdir, vcfg, resume=True, progress=progress)
        train_s = time.perf_counter() - t0
        model = load_adapter(loaded.model, vdir / "adapter")
        try:
            t0 = time.perf_counter()
            if base_raw is None:  # the base model's two arms do not depend on the variant
                from cai_lib.adapters import adapter_disabled
                with adapter_disabled(model):
                    outs = generate(model, loaded.tokenizer, [it["instruction"] for it in eval_items],
                                    max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.gen_batch_size,
                                    progress=progress, desc="base raw")
                base_raw = score_records([{**it, **o, "model": "base"} for it, o in zip(eval_items, outs)])
                base_fs, _ = generate_fewshot(model, loaded.tokenizer, eval_items, cfg, progress=progress)
                result["arms"] = {"base_raw": arm_summary(base_raw, cfg.skew_threshold),
                                  "base_fewshot": arm_summary(base_fs, cfg.skew_threshold)}
            outs = generate(model, loaded.tokenizer, [it["instruction"] for it in eval_items],
                            max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.gen_batch_size, progress=progress,
                            desc=f"trained {name}")
            trained = score_records([{**it, **o, "model": "trained"} for it, o in zip(eval_items, outs)])
            eval_s = time.perf_counter() - t0
        finally:
            model.unload()
        result["variants"][name] = {
            "pairs": pair_summary(stats), "trained_raw": arm_summary(trained, cfg.skew_threshold),
            "trained_vs_base_fewshot": {f: vs(base_fs, trained, cfg, f) for f in ("strict", "loose")},
            "trained_vs_base_raw": vs(base_raw, trained, cfg, "strict"),
            "train": {"steps": summary["steps"], "final_margin": summary["final"]["reward_margin"],
                      "final_accuracy": summary["final"]["accuracy"]},
            "seconds": {"pairs": round(pair_s, 1), "train": round(train_s, 1), "eval": round(eval_s, 1)},
            "examples": [{"instruction": r["instruction"], "response": r["response"][:160], "strict": r["strict"]}
                         for r in trained[:6]]}
        write_json(json_path, result)  # after every variant: a cut-short run keeps what finished
        print(f"{name}: done", flush=True)
    return result


def table(result: dict) -> str:
    a = result["arms"]
    lines = ["| arm / variant | pairs | share chosen shorter | length-matched | strict | loose | form | EOS | "
             "yes/no acc | yes share (true) | trained − few-shot strict [95% CI], McNemar p |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in ("base_raw", "base_fewshot"):
        if arm in a:
            r = a[arm]
            lines.append(f"| {arm} | - | - | - | {r['strict']:.2f} | {r['loose']:.2f} | {r['form']:.2f} | "
                         f"{r['eos_rate']:.2f} | {r['yes_no_accuracy']} | {r['yes_share']} ({r['true_yes_share']}) | - |")
    for name, v in result["variants"].items():
        p, t, s = v["pairs"], v["trained_raw"], v["trained_vs_base_fewshot"]["strict"]
        lines.append(f"| trained · {name} | {p['n_pairs']} | {p['share_chosen_shorter']} | {p['share_length_matched']} | "
                     f"{t['strict']:.2f} | {t['loose']:.2f} | {t['form']:.2f} | {t['eos_rate']:.2f} | "
                     f"{t['yes_no_accuracy']} | {t['yes_share']} ({t['true_yes_share']}) | "
                     f"{s['diff']:+.2f} [{s['diff_ci'][0]:+.2f}, {s['diff_ci'][1]:+.2f}], p={s['mcnemar_p']:.2g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from cai_lib.config import RunConfig
    from cai_lib.errors import CaiError

    ap = argparse.ArgumentParser(description="pair-construction ablation (issue 12)")
    ap.add_argument("--out", required=True, help="a fresh folder for the ablation's run (resumable)")
    # Every knob defaults to the run configuration's default (= the cpu-quick profile), so the
    # ablation trains and evaluates exactly as `cai run --profile cpu-quick` does unless told otherwise.
    ap.add_argument("--n-train", type=int, default=None, help="n_train_items (default: the config's)")
    ap.add_argument("--n-eval", type=int, default=None, help="n_eval_items (default: the config's)")
    ap.add_argument("--k", type=int, default=None, help="pair_sc_k, self_consistency samples per item")
    ap.add_argument("--max-steps", type=int, default=None, help="max_steps (default: the config's epochs)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="data and eval generation limit")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ablation_pairs_cpu.json"))
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        names = [n for n in a.variants.split(",") if n]
        bad = [n for n in names if n not in VARIANTS]
        if bad:
            raise CaiError(f"--variants: unknown {bad[0]!r} — choose from {list(VARIANTS)}")
        given = {"n_train_items": a.n_train, "n_eval_items": a.n_eval, "pair_sc_k": a.k, "max_steps": a.max_steps,
                 "data_max_new_tokens": a.max_new_tokens, "eval_max_new_tokens": a.max_new_tokens}
        cfg = RunConfig(**{k: v for k, v in given.items() if v is not None})
        result = run(Path(a.out), cfg, names, Path(a.json), progress=not a.quiet)
    except CaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
