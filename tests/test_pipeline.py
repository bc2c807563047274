"""`cai run` end to end on a tiny random model: papermill executes all five notebooks,
nbconvert renders them, the manifest and gate are written, and a rerun skips stages
whose inputs did not change. The tiny model writes gibberish, so stage 01 keeps few or
no pairs; the test then supplies easy pairs, as a researcher could, and runs 02-04."""

import json
import re

import pytest
import yaml

from cai_lib.cli import main
from cai_lib.jsonl import read_jsonl, write_jsonl
from cai_lib.runs import base_dir, run_paths, runs_root

pytestmark = pytest.mark.slow


def _profile(tmp_path, model_dir):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump({
        "model": str(model_dir), "baseline_n_items": 8, "baseline_max_new_tokens": 6, "gen_batch_size": 4,
        "determinism_sample": 2, "n_train_items": 8, "n_eval_items": 8, "data_max_new_tokens": 6,
        "max_steps": 2, "save_steps": 1, "per_device_batch_size": 2, "eval_max_new_tokens": 6,
        "spot_check_n": 4, "lora_r": 4, "lora_alpha": 8,
    }))
    return p


def test_cai_run_end_to_end_tiny(tmp_path, tiny_model_dir, capsys):
    profile = _profile(tmp_path, tiny_model_dir)
    assert main(["run", "--profile", str(profile), "--run-id", "t1", "--stages", "00,01"]) == 0
    paths = run_paths(runs_root() / "t1")
    assert paths.baseline.exists() and paths.eval_instructions.exists()
    formats = {r["format"] for r in read_jsonl(paths.baseline)}
    assert formats == {"raw", "instruction_response", "qa", "few_shot"}

    train = read_jsonl(paths.train_instructions)
    write_jsonl(paths.preference_pairs, [
        {"prompt": it["instruction"], "chosen": "Paris.", "rejected": "Paris is is is is", "item_id": it["id"],
         "type": it["type"], "strategy": "test"} for it in train])
    # Replacing a finished stage's output is refused downstream unless it is recorded: the
    # manifest then holds the supplied file's hash and says where it came from.
    from cai_lib import stages
    from cai_lib.config import resolve
    run_dir = runs_root() / "t1"
    stages.finish(run_dir, "01", resolve(run_dir, {}), note="preference pairs supplied by the test")
    assert main(["run", "--profile", str(profile), "--run-id", "t1", "--stages", "02,03,04"]) == 0
    out = capsys.readouterr().out
    assert "gate verdict:" in out
    # each stage's own progress on the console (no environment variable), and the adapter's
    # model card carries the verdict once stage 04 ran
    # (off a terminal the first frame shows at once, later ones every 30 s, the last at the end)
    # one progress line per stage: stage 03's last bar is one of its three arms, 8 of 8 items
    assert "stage 02 02_train: " in out
    assert re.search(r"stage 03 03_evaluate: (base|trained|base few-shot) 8/8 \(100%\)", out), out
    card = (paths.adapter / "README.md").read_text()
    assert f"Stage 1 gate: **{json.loads(paths.gate.read_text())['verdict']}**" in card

    reports = base_dir() / "reports" / "t1"
    for name in ("00_baseline", "01_generate", "02_train", "03_evaluate", "04_report"):
        html = reports / f"{name}.html"
        assert html.exists() and html.stat().st_size > 10_000, name
    gate = json.loads(paths.gate.read_text())
    assert gate["verdict"] in {"PASS", "FAIL", "NO_GAP"}
    m = json.loads(paths.manifest.read_text())
    assert {"00", "01", "02", "03", "04"} <= set(m["stages"])
    assert all(m["stages"][k]["status"] == "done" for k in m["stages"])
    assert m["versions"]["transformers"] and m["git"] is not None
    assert "data/eval_instructions.jsonl" in m["files"]
    t01 = m["stages"]["01"]["timing"]
    assert set(t01) == {"split_seconds", "load_seconds", "pairs_seconds"}
    assert sum(t01.values()) <= m["stages"]["01"]["seconds"]
    # stage 02 says where its time went, in the manifest and in its report
    t02 = m["stages"]["02"]["timing"]
    assert 0 < t02["load_seconds"] and 0 < t02["run_dpo_seconds"] <= m["stages"]["02"]["seconds"]
    assert "model load" in (reports / "02_train.html").read_text()
    assert m["approval"]["adapter_approved"] == (gate["verdict"] == "PASS")
    base, trained = read_jsonl(paths.eval_base), read_jsonl(paths.eval_trained)
    assert [r["instruction"] for r in base] == [r["instruction"] for r in trained]  # same raw prompts
    assert all({"strict", "loose", "form", "finish_reason"} <= set(r) for r in base + trained)

    # Rerun: nothing changed, so 00-03 are skipped and only the report is rebuilt.
    assert main(["run", "--profile", str(profile), "--run-id", "t1"]) == 0
    out = capsys.readouterr().out
    for key in ("00", "01", "02", "03"):
        assert f"stage {key}" in out and "skipped" in out.split(f"stage {key}")[1].splitlines()[0]
    assert "stage 04 04_report: done" in out

    # `cai eval` on any item file: both models, scored records and the stats summary.
    out_dir = tmp_path / "own_eval"
    assert main(["eval", "--run", str(runs_root() / "t1"), "--items", str(paths.eval_instructions),
                 "-o", str(out_dir)]) == 0
    stats = json.loads((out_dir / "stats.json").read_text())
    assert stats["n"] == len(read_jsonl(paths.eval_instructions))
    assert {"mcnemar_p", "base_ci", "trained_ci", "cohens_h", "by_type"} <= set(stats)
    assert len(read_jsonl(out_dir / "eval_trained.jsonl")) == stats["n"]
