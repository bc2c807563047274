"""Stage 02 · train: DPO with a LoRA adapter on the stage-01 pairs, resuming from the
newest complete checkpoint.

Writes checkpoints/, results/training_log.json and adapter/ (`cai_lib.train.run_dpo`);
records the training summary."""

from __future__ import annotations

from .records import StageResult, begin, finish
from ..runs import run_paths


def run(run_dir, cfg, *, overwrite: bool = False) -> StageResult:
    from .. import guard, models
    from ..train import run_dpo

    import time

    begin(run_dir, "02", cfg, overwrite=overwrite)
    loaded = models.load_configured(cfg, purpose="train")
    guard_info = guard.guard_report(loaded)
    t_train = time.time()
    session = run_dpo(loaded, run_paths(run_dir).preference_pairs, run_dir, cfg)
    # where the stage's time went, beside the trainer's own runtime: the model load, and
    # run_dpo as a whole (pair tokenisation, trainer setup, reference pass, steps, adapter save)
    session.summary["timing"] = {"load_seconds": loaded.info.get("load_seconds"),
                                 "run_dpo_seconds": round(time.time() - t_train, 2)}
    facts = {k: v for k, v in session.summary.items() if k != "log"}
    finish(run_dir, "02", cfg, **facts)
    return StageResult("02", True, facts, {"loaded": loaded, "guard": guard_info, "summary": session.summary,
                                           "training_log": session.log})
