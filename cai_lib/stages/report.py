"""Stage 04 · report: paired statistics, the Stage 1 gate and the adapter's approval.

Reads stage 03's scored records (and 01's overlap report, 02's training log); writes
results/stats.json, gate.json and spot_check.csv and the manifest's approval and file
hashes. On a finished run opened without `overwrite` it shows the same figures and writes
nothing (except a missing spot-check sheet)."""

from __future__ import annotations

from .records import StageResult, begin, finish
from ..errors import CaiError
from ..runs import run_paths


def run(run_dir, cfg, *, overwrite: bool = False) -> StageResult:
    from .. import gate, manifest, report
    from ..arms import load_arms
    from ..jsonl import read_json, read_jsonl
    from ..spot_check import spot_check_agreement, write_spot_check

    writable = begin(run_dir, "04", cfg, overwrite=overwrite, read_only_ok=True)
    paths = run_paths(run_dir)
    for p, stage in ((paths.eval_base, "03"), (paths.eval_trained, "03"), (paths.overlap_report, "01")):
        if not p.exists():
            raise CaiError(f"{p}: missing — run stage {stage} first (cai run --stages {stage})")
    base, trained = read_jsonl(paths.eval_base), read_jsonl(paths.eval_trained)
    judged = gate.run_gate(run_dir, cfg, base, trained)
    if writable:
        gate.record_gate(run_dir, cfg, judged)
    if writable or not paths.spot_check.exists():
        write_spot_check(base, trained, paths.spot_check, n=cfg.spot_check_n, seed=cfg.seed)
    data = report.report_frames(paths, cfg, base, trained, judged,
                                spot_check_agreement(paths.spot_check, field=cfg.gate_field))
    if writable:
        manifest.update(run_dir, files=manifest.file_hashes(run_dir))  # the run's files as this report saw them
    data.update(arms=load_arms(paths), training_log=read_json(paths.training_log),
                warnings=report.run_warnings(run_dir),
                # the manifest as it stood before this stage's own record: what the report showed
                # when the notebook recorded stage 04 in its last cell
                manifest=manifest.load(run_dir))
    facts = {"verdict": judged["gate"]["verdict"]}
    if writable:
        finish(run_dir, "04", cfg, **facts)
    return StageResult("04", writable, facts if writable else {}, data)
