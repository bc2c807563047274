"""The 2x2 ablation behind the base-model default: DPO loss x leading whitespace of chosen.

    loss_type   ["sigmoid"]  vs  ["sigmoid", "sft"]   (SFT term on the chosen completion)
    chosen      starts on the line after the instruction (chosen_leading_space=False)
                vs  starts with a space on the instruction's line (True)

Given a run directory holding data/preference_pairs.jsonl and data/eval_instructions.jsonl,
trains four adapters with the run's settings (same seed, same steps; each in
<run>/ablation/<variant>/, resumable), then evaluates the base model once and each adapter
on the eval instructions exactly as stage 03 does — raw instruction, greedy, no stop
strings — and scores with cai_lib.scoring. Prints a markdown table (EOS rate, strict,
loose, form) and writes <run>/results/ablation_loss.json.

    python benchmarks/ablation_loss.py --run runs/<run_id> [--max-steps N] [--n-eval 0]

Measured before this package (Gemma 3 270M, CPU, 33 pairs, 3 epochs, r=16, lr 1e-4, 67 eval
instructions): sigmoid + space-led chosen ended 1/67 answers (strict 0/67); sigmoid+sft with
newline-led chosen ended 67/67 (strict 35/67). Both factors changed at once; this separates them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = [
    # name, loss_type, chosen_leading_space
    ("sigmoid_newline", ["sigmoid"], False),
    ("sigmoid_space", ["sigmoid"], True),
    ("sigmoid+sft_newline", ["sigmoid", "sft"], False),
    ("sigmoid+sft_space", ["sigmoid", "sft"], True),
]


def variant_config(cfg, loss_type, leading_space):
    weights = list(cfg.loss_weights) if len(cfg.loss_weights) == len(loss_type) else [1.0] * len(loss_type)
    return dataclasses.replace(cfg, loss_type=list(loss_type), loss_weights=weights, chosen_leading_space=leading_space)


def summarize_outputs(scored: list[dict]) -> dict:
    n = len(scored)
    rate = lambda k: sum(bool(r[k]) for r in scored) / n if n else None  # noqa: E731
    return {
        "n": n,
        "eos_rate": sum(r["finish_reason"] == "eos" for r in scored) / n if n else None,
        "strict": rate("strict"), "loose": rate("loose"), "form": rate("form"),
        "mean_new_tokens": sum(r.get("new_tokens", 0) for r in scored) / n if n else None,
    }


def evaluate(model, tokenizer, items, cfg, *, desc, progress):
    from cai_lib.generate import generate
    from cai_lib.scoring import score_records

    outs = generate(model, tokenizer, [it["instruction"] for it in items], max_new_tokens=cfg.eval_max_new_tokens,
                    batch_size=cfg.gen_batch_size, stop=None, progress=progress, desc=desc)
    return score_records([{**it, **o, "model": desc} for it, o in zip(items, outs)])


def run_ablation(loaded, run_dir, cfg, items, *, variants=VARIANTS, progress=True) -> dict:
    """Train each variant from `loaded` (LoRA layers are removed between variants) and
    evaluate base + every adapter on `items`; returns {"rows": [...], "winner": name}."""
    from cai_lib import train
    from cai_lib.adapters import load_adapter
    from cai_lib.runs import run_paths

    paths = run_paths(run_dir)
    rows = []
    base_scored = evaluate(loaded.model, loaded.tokenizer, items, cfg, desc="base", progress=progress)
    rows.append({"variant": "base (no adapter)", "loss_type": None, "chosen_leading_space": None,
                 **summarize_outputs(base_scored)})
    examples = {"base (no adapter)": [r["response"] for r in base_scored[:3]]}
    for name, loss_type, leading_space in variants:
        vcfg = variant_config(cfg, loss_type, leading_space)
        vdir = Path(run_dir) / "ablation" / name
        t0 = time.perf_counter()
        summary = train.train_dpo(loaded, paths.preference_pairs, vdir, vcfg, resume=True, progress=progress)
        train_s = time.perf_counter() - t0
        model = load_adapter(loaded.model, vdir / "adapter")
        try:
            scored = evaluate(model, loaded.tokenizer, items, cfg, desc=name, progress=progress)
        finally:
            model.unload()  # back to the plain base for the next variant
        rows.append({"variant": name, "loss_type": loss_type, "chosen_leading_space": leading_space,
                     **summarize_outputs(scored), "steps": summary["steps"],
                     "final_margin": summary["final"]["reward_margin"], "final_accuracy": summary["final"]["accuracy"],
                     "train_seconds": round(train_s, 1)})
        examples[name] = [r["response"] for r in scored[:3]]
    trained = [r for r in rows if r["loss_type"] is not None]
    winner = max(trained, key=lambda r: (r["strict"], r["form"], r["eos_rate"]))["variant"]
    return {"rows": rows, "winner": winner, "examples": examples}


def table(rows) -> str:
    lines = ["| variant | loss_type | chosen starts with | EOS rate | strict | loose | form | final margin |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lead = "-" if r["chosen_leading_space"] is None else ("space" if r["chosen_leading_space"] else "newline")
        lt = "-" if r["loss_type"] is None else "+".join(r["loss_type"])
        margin = r.get("final_margin")
        lines.append(f"| {r['variant']} | {lt} | {lead} | {r['eos_rate']:.2f} | {r['strict']:.2f} | {r['loose']:.2f} | "
                     f"{r['form']:.2f} | {'-' if margin is None else f'{margin:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from cai_lib.config import resolve
    from cai_lib.errors import CaiError
    from cai_lib.items import load_items
    from cai_lib.jsonl import write_json
    from cai_lib.models import load_configured
    from cai_lib.runs import run_paths

    ap = argparse.ArgumentParser(description="2x2 ablation: loss_type x chosen leading whitespace")
    ap.add_argument("--run", required=True, help="run directory with data/preference_pairs.jsonl and data/eval_instructions.jsonl")
    ap.add_argument("--max-steps", type=int, default=None, help="override the run's max_steps (default: its config)")
    ap.add_argument("--n-eval", type=int, default=0, help="first N eval instructions only (0 = all)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        paths = run_paths(a.run)
        for p in (paths.preference_pairs, paths.eval_instructions):
            if not p.exists():
                raise CaiError(f"{p}: missing — run stages 00-01 for this run first")
        overrides = {"max_steps": a.max_steps} if a.max_steps is not None else {}
        cfg = resolve(Path(a.run), overrides)
        items = load_items(paths.eval_instructions)
        if a.n_eval:
            items = items[: a.n_eval]
        loaded = load_configured(cfg, purpose="train")
        result = run_ablation(loaded, a.run, cfg, items, progress=not a.quiet)
    except CaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    result["config"] = {k: getattr(cfg, k) for k in ("model", "seed", "max_steps", "num_epochs", "learning_rate", "beta",
                                                      "lora_r", "lora_alpha", "per_device_batch_size", "eval_max_new_tokens")}
    result["n_eval"] = len(items)
    out = paths.results / "ablation_loss.json"
    write_json(out, result)
    print(table(result["rows"]))
    print(f"\nwinner (strict, then form, then EOS rate): {result['winner']}   written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
