"""Stage 03 · evaluate: base raw, base with its few-shot prompt, and trained raw, on the
same held-out instructions in identical batches (one copy of the weights; the adapter is
attached unmerged or merged after the base arms, evaluate.adapter_plan).

Writes results/eval_base.jsonl, eval_fewshot.jsonl, eval_trained.jsonl and
eval_summary.json (`cai_lib.evaluate.run_evaluation`); records decoding, timing, the
batched-vs-batch-1 agreement and the contamination guard's evidence (the gate reads it).
A dry run generates nothing and is recorded as such."""

from __future__ import annotations

from .records import StageResult, begin, finish
from ..runs import run_paths

RECORDED = ("n_items", "backend", "decoding", "trained_weights", "timing", "determinism", "guard", "memory_start", "memory_end",
            "dry_run")


def run(run_dir, cfg, *, overwrite: bool = False) -> StageResult:
    from ..evaluate import evaluate_arms

    begin(run_dir, "03", cfg, overwrite=overwrite)
    summary, arms = evaluate_arms(cfg, run_paths(run_dir))
    facts = {k: summary.get(k) for k in RECORDED}
    finish(run_dir, "03", cfg, status="dry_run" if cfg.dry_run else "done", **facts)
    return StageResult("03", True, facts, {"summary": summary, "arms": arms})
