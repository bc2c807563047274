"""Stage 00 · baseline: the base model on raw instructions, in several prompt formats.

Writes results/baseline.jsonl, baseline_summary.json and sentinels.jsonl
(`cai_lib.baseline.run_baseline`); records the decoding settings, the batched-vs-batch-1
agreement, throughput and the contamination guard's evidence."""

from __future__ import annotations

from .records import StageResult, begin, finish
from ..runs import run_paths


def run(run_dir, cfg, *, overwrite: bool = False) -> StageResult:
    from .. import baseline, guard, models

    begin(run_dir, "00", cfg, overwrite=overwrite)
    loaded = models.load_configured(cfg)
    guard_info = guard.guard_report(loaded)
    paths = run_paths(run_dir)
    summary = baseline.run_baseline(loaded, cfg, paths)
    # run_baseline returns the summary only; its scored records are read once, here
    records = baseline.load_records(paths)
    facts = {"decoding": summary["decoding"], "determinism": summary["determinism"],
             "throughput": summary["throughput"], "guard": guard_info, "backend": loaded.backend,
             "timing": {**summary["timing"], "load_seconds": loaded.info.get("load_seconds")}}
    finish(run_dir, "00", cfg, **facts)
    return StageResult("00", True, facts, {"loaded": loaded, "guard": guard_info, "summary": summary,
                                           "records": records})
