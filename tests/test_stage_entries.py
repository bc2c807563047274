"""One pattern for every stage: `stages.<name>.run(run_dir, cfg, overwrite=...)` begins the
stage, writes its outputs, records it and returns a StageResult the notebook displays.
Notebooks hold no stage bookkeeping of their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai_lib import gate, manifest, runs, stages
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.jsonl import read_json, write_json, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = {"00_baseline": "baseline", "01_generate": "data", "02_train": "train", "03_evaluate": "evaluate",
           "04_report": "report"}


def _code(nb: str) -> str:
    cells = json.loads((ROOT / "notebooks" / f"{nb}.ipynb").read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells
                     if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))


@pytest.mark.parametrize("nb,entry", sorted(ENTRIES.items()))
def test_notebook_calls_its_stage_entry_and_does_no_bookkeeping(nb, entry):
    code = _code(nb)
    assert f"stages.{entry}.run(run_dir, cfg, overwrite=overwrite)" in code
    assert code.count(".run(run_dir, cfg") == 1
    for own in ("stages.begin", "stages.finish", "record_stage", "update_stage", "write_json", "write_jsonl",
                "read_json", "read_jsonl", "load_records", "load_arms", "paths."):
        assert own not in code, f"{nb} does {own} itself: the stage entry owns its files and its record"


def test_every_stage_has_an_entry():
    assert [s.key for s in stages.STAGES] == ["00", "01", "02", "03", "04"]
    for entry in ENTRIES.values():
        assert callable(getattr(stages, entry).run)


# ---- stage 04 on a synthetic run: the gate computed, written and recorded by the entry ----------

def _records(n_pass: int, n: int = 20) -> list[dict]:
    return [{"id": f"e{i}", "type": "qa" if i % 2 else "list", "instruction": f"Question {i}?",
             "response": "Yes." if i < n_pass else "Q: next", "finish_reason": "eos", "strict": i < n_pass,
             "loose": i < n_pass, "form": True, "failures": [] if i < n_pass else ["stops"]} for i in range(n)]


def _finished_run(cfg: RunConfig) -> Path:
    """A run whose stages 01-03 finished (recorded by stages.finish) with real-shaped records."""
    run_dir = runs.runs_root() / "r1"
    paths = runs.run_paths(run_dir)
    write_json(run_dir / "config.json", cfg.to_dict())
    for p in (paths.train_instructions, paths.eval_instructions, paths.preference_pairs):
        write_jsonl(p, [{}])
    write_json(paths.overlap_report, {"clean": True, "flagged": [], "n_flagged": 0})
    write_json(paths.pair_stats, {})
    stages.finish(run_dir, "01", cfg)
    write_json(paths.training_log, {"steps": [{"step": 1, "loss": 0.69, "reward_margin": 0.0}], "sessions": []})
    paths.adapter.mkdir(parents=True)
    (paths.adapter / "adapter_config.json").write_text("{}")
    stages.finish(run_dir, "02", cfg)
    write_jsonl(paths.eval_base, _records(2))
    write_jsonl(paths.eval_fewshot, _records(6))
    write_jsonl(paths.eval_trained, _records(19))
    write_json(paths.eval_summary, {})
    stages.finish(run_dir, "03", cfg, guard={"chat_template_now": False, "chat_markers_checked": ["<|im_start|>"]})
    return run_dir


def test_report_entry_writes_records_and_then_shows_read_only(tmp_path, capsys):
    cfg = RunConfig(n_bootstrap=200, spot_check_n=4, gate_target=0.9)
    run_dir = _finished_run(cfg)
    paths = runs.run_paths(run_dir)

    result = stages.report.run(run_dir, cfg)
    g = read_json(paths.gate)
    assert result.key == "04" and result.written is True
    assert result.record == {"verdict": g["verdict"]} and result["gate"] == g
    assert read_json(paths.stats)["gate_field"] == "strict" and paths.spot_check.exists()
    m = manifest.load(run_dir)
    assert m["stages"]["04"]["status"] == "done" and m["stages"]["04"]["verdict"] == g["verdict"]
    assert m["approval"] == {"adapter_approved": g["verdict"] == "PASS", "verdict": g["verdict"]}
    assert "results/eval_base.jsonl" in m["files"]
    # what the notebook shows comes with the result, not from files it reads back
    assert set(result["arms"]) == {"base", "base_fewshot", "trained"}
    assert result["training_log"] == read_json(paths.training_log)
    assert result["stats"]["trained_rate"] == 0.95 and result["stats"]["base_rate"] == 0.1
    assert list(result["rates"]["model"].unique()) == ["base", "trained"]
    assert result["manifest"]["stages"]["04"]["status"] == "running"  # the table as the notebook showed it

    before = {p: p.read_bytes() for p in (paths.gate, paths.stats, paths.spot_check, paths.manifest)}
    again = stages.report.run(run_dir, cfg)  # a finished run opened without overwrite
    assert again.written is False and again.record == {} and again["gate"] == g
    assert {p: p.read_bytes() for p in before} == before
    assert "showing its results without rewriting them" in capsys.readouterr().out


def test_run_gate_judges_without_writing_and_record_gate_approves_only_a_pass(tmp_path):
    cfg = RunConfig(n_bootstrap=200, gate_target=0.9)
    run_dir = _finished_run(cfg)
    paths = runs.run_paths(run_dir)
    from cai_lib.jsonl import read_jsonl
    judged = gate.run_gate(run_dir, cfg, read_jsonl(paths.eval_base), read_jsonl(paths.eval_trained))
    assert set(judged) == {"all_stats", "in_context", "gate"} and set(judged["all_stats"]) == {"strict", "loose", "form"}
    assert not paths.stats.exists() and not paths.gate.exists() and "approval" not in manifest.load(run_dir)
    gate.record_gate(run_dir, cfg, {**judged, "gate": {**judged["gate"], "verdict": "FAIL"}})
    assert manifest.load(run_dir)["approval"] == {"adapter_approved": False, "verdict": "FAIL"}
    gate.record_gate(run_dir, cfg, {**judged, "gate": {**judged["gate"], "verdict": "PASS"}})
    assert manifest.load(run_dir)["approval"] == {"adapter_approved": True, "verdict": "PASS"}
    assert read_json(paths.gate)["verdict"] == "PASS"


def test_report_entry_refuses_before_writing_when_stage_03_did_not_finish(tmp_path):
    cfg = RunConfig(n_bootstrap=200)
    run_dir = _finished_run(cfg)
    manifest.update_stage(run_dir, "03", status="running")
    with pytest.raises(CaiError, match="needs stage 03 finished"):
        stages.report.run(run_dir, cfg)
    assert not runs.run_paths(run_dir).gate.exists()
