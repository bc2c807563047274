"""The field's conventions: report_to through TRL, curves from the trainer's log_history, one
progress line per stage on `cai run`, a portable adapter with a filled model card."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from cai_lib import model_card, pair_tokens, progress, stages, train, train_log
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.jsonl import read_json, sha256_file, write_json, write_jsonl

sys.path.insert(0, str(Path(__file__).parent))
from test_train import easy_pairs, load_dir, pairs_path, small_cfg  # noqa: E402


# ---- progress lines ---------------------------------------------------------------------------

def _tqdm_stderr(total=50, upto=20, desc="generate") -> str:
    """What a kernel's stderr receives from a real tqdm bar."""
    from tqdm import tqdm
    buf = io.StringIO()
    with tqdm(total=total, desc=desc, file=buf, mininterval=0, ascii=False) as bar:
        for _ in range(upto):
            bar.update(1)
    return buf.getvalue()


def test_last_tqdm_frame_is_read_from_real_tqdm_output():
    frame = progress.last_frame(_tqdm_stderr(total=50, upto=20, desc="pairs:response"))
    assert frame["desc"] == "pairs:response" and (frame["n"], frame["total"], frame["pct"]) == ("20", "50", "40")
    line = progress.describe(frame)
    assert line.startswith("pairs:response 20/50 (40%), ") and "ETA" in line
    assert progress.describe(progress.last_frame(_tqdm_stderr(desc=""))).startswith("steps 20/50")
    assert progress.last_frame("Unsloth: Will patch your computer\nSyntaxWarning: invalid escape") is None


def test_stage_progress_prints_one_line_per_interval_and_the_last_at_close():
    out = io.StringIO()
    p = progress.StageProgress("stage 03 03_evaluate", out=out, every_s=3600, tty=False)
    p.write(_tqdm_stderr(total=10, upto=1, desc="base"))
    p.write("some warning text\n")
    p.write(_tqdm_stderr(total=10, upto=5, desc="base"))  # within the interval: held back
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(x.startswith("  stage 03 03_evaluate: base ") for x in lines)
    assert "1/10" in lines[0] and "5/10" in lines[1] and "warning" not in out.getvalue()


def test_stage_progress_on_a_terminal_rewrites_one_line():
    out = io.StringIO()
    p = progress.StageProgress("stage 02 02_train", out=out, tty=True)
    for k in (1, 2, 3):
        p.write(_tqdm_stderr(total=3, upto=k, desc=""))
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1 and "steps 3/3" in text


def test_papermill_hands_a_notebooks_progress_bars_to_the_stage_line(tmp_path):
    """The real route: a kernel's tqdm bar -> papermill's stderr_file -> one line per stage."""
    import nbformat
    import papermill as pm
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from tqdm import tqdm\nimport sys\nprint('cell output stays in the notebook')\n"
        "for _ in tqdm(range(7), desc='generate', mininterval=0): pass\n")]
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(src))
    out = io.StringIO()
    sink = progress.StageProgress("stage 00 00_baseline", out=out, every_s=0, tty=False)
    pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                        stderr_file=sink)
    sink.close()
    lines = out.getvalue().splitlines()
    assert lines and lines[-1].startswith("  stage 00 00_baseline: generate 7/7 (100%)")
    assert "cell output" not in out.getvalue()


# ---- report_to ------------------------------------------------------------------------------

def test_report_to_is_validated_by_runconfig():
    assert RunConfig().report_to == "none"
    with pytest.raises(CaiError, match=r"report_to='comet' is not one of \['none', 'tensorboard'"):
        RunConfig(report_to="comet")


def test_report_to_needs_its_package_and_says_so(tmp_path, monkeypatch):
    import importlib.util
    assert train_log.reporting_args(small_cfg(), tmp_path) == {"report_to": "none"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(CaiError, match="report_to=wandb but the package wandb is not installed — pip install wandb"):
        train_log.reporting_args(small_cfg(report_to="wandb"), tmp_path)


@pytest.fixture()
def trained_run(tiny_model_dir, tmp_path_factory):
    """A 2-step DPO run in a run folder with config.json and manifest.json (like `cai run` makes)."""
    run = tmp_path_factory.mktemp("conv") / "r7"
    write_jsonl(run / "data" / "preference_pairs.jsonl", easy_pairs())
    cfg = small_cfg(max_steps=2, save_steps=2)
    write_json(run / "config.json", cfg.to_dict())
    write_json(run / "manifest.json", {"run": {"run_id": "r7"}})
    summary = train.train_dpo(load_dir(tiny_model_dir), pairs_path(run), run, cfg, progress=False)
    return run, summary


def test_training_log_keeps_the_trainers_own_log_history(trained_run):
    run, summary = trained_run
    log = read_json(run / "results" / "training_log.json")
    steps = [e for e in log["log_history"] if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2]
    assert {"rewards/margins", "rewards/accuracies", "learning_rate"} <= set(steps[0])  # TRL's own names
    assert [e["loss"] for e in steps] == [s["loss"] for s in log["steps"]]
    curves = train_log.log_history_curves(log["log_history"])
    assert curves["loss"] == ([1, 2], [e["loss"] for e in steps])


def test_tensorboard_gets_the_curves_offline(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX" if not _has("tensorboard") else "tensorboard")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    run = tmp_path / "tb"
    write_jsonl(run / "data" / "preference_pairs.jsonl", easy_pairs())
    train.train_dpo(load_dir(tiny_model_dir), pairs_path(run), run,
                    small_cfg(max_steps=2, save_steps=2, report_to="tensorboard"), progress=False)
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 100


def _has(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


# ---- the adapter folder: portable base id, manifest hash, model card ------------------------

def test_portable_base_id_is_never_a_local_path(tmp_path):
    assert model_card.portable_base_id("embedded:gemma-3-270m", "/somewhere/models/gemma-3-270m-pt") == \
        "embedded:gemma-3-270m"
    assert model_card.portable_base_id("Qwen/Qwen2.5-32B", "/cache/x", {"hub_id": "Qwen/Qwen2.5-32B"}) == \
        "Qwen/Qwen2.5-32B"
    snap = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    assert model_card.portable_base_id(str(snap), snap) == "Qwen/Qwen2.5-7B"
    named = tmp_path / "my-base"
    named.mkdir()
    (named / "config.json").write_text(json.dumps({"_name_or_path": "meta-llama/Llama-3.1-8B"}))
    assert model_card.portable_base_id(str(named), named) == "meta-llama/Llama-3.1-8B"
    (named / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path / "elsewhere")}))
    assert model_card.portable_base_id(str(named), named) == "my-base"
    assert model_card.portable_base_id(str(tmp_path / "w.Q4_K_M.gguf"), tmp_path / "conv") == "w.Q4_K_M.gguf"


def test_adapter_records_portable_base_manifest_hash_and_a_filled_card(trained_run, tiny_model_dir):
    run, summary = trained_run
    ad = run / "adapter"
    cfg = json.loads((ad / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == Path(tiny_model_dir).name  # not the absolute folder
    meta = json.loads((ad / "cai_adapter.json").read_text())
    assert meta["base_model"] == Path(tiny_model_dir).name and meta["run_id"] == "r7"
    assert meta["manifest_sha256"] and len(meta["manifest_sha256"]) == 64
    assert meta["config_sha256"] == sha256_file(run / "config.json")
    card = (ad / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft")
    assert f"`{meta['base_model']}`" in card and summary["pairs_sha256"] in card and meta["manifest_sha256"] in card
    assert "DPO with TRL (loss ['sigmoid', 'sft']" in card and "LoRA r=8 alpha=16" in card
    assert "Not evaluated yet" in card and str(tiny_model_dir) not in card
    # the card travels: PEFT still loads the adapter onto its base
    from cai_lib.adapters import check_adapter_matches, load_adapter
    check_adapter_matches(ad, load_dir(tiny_model_dir))
    assert hasattr(load_adapter(load_dir(tiny_model_dir).model, ad), "disable_adapter")


def test_the_verdict_goes_into_the_card_without_changing_the_adapters_hash(trained_run):
    run, _ = trained_run
    before = stages.hash_path(run / "adapter")
    stats = {"n": 120, "base_rate": 0.05, "trained_rate": 0.4, "base_ci": [0.02, 0.1], "trained_ci": [0.32, 0.49],
             "diff": 0.35, "diff_ci": [0.26, 0.44], "mcnemar_p": 1.2e-12}
    write_json(run / "results" / "stats.json", {"gate_field": "strict", "strict": stats})
    write_json(run / "results" / "gate.json", {"verdict": "FAIL", "reasons": ["trained 0.40 < target 0.95"]})
    card = model_card.refresh_model_card(run).read_text()
    assert "Stage 1 gate: **FAIL**" in card and "| trained | 0.400 | 0.320–0.490 |" in card
    assert "Difference +0.350 (95% CI +0.260 to +0.440), exact McNemar p = 1.2e-12, n = 120." in card
    assert "- trained 0.40 < target 0.95" in card
    assert stages.hash_path(run / "adapter") == before  # stage 02's output is unchanged
    (run / "adapter" / "adapter_config.json").write_text("{}")  # anything else still counts
    assert stages.hash_path(run / "adapter") != before


# ---- pairs in the text TRL trains on --------------------------------------------------------

@pytest.mark.parametrize("leading_space", [False, True])
def test_pairs_file_holds_the_text_trl_trains_on(tiny_tok, tmp_path, leading_space):
    from datasets import load_dataset

    from cai_lib.pairs import trl_record
    raw = {"prompt": "Name one colour.", "chosen": "Blue.", "rejected": "Blue. Name one animal. Cat.",
           "item_id": "c1", "type": "short"}
    rec = trl_record(raw, leading_space)
    sep = " " if leading_space else "\n"
    assert (rec["chosen"], rec["rejected"]) == (sep + "Blue.", sep + "Blue. Name one animal. Cat.")
    assert (rec["chosen_answer"], rec["rejected_answer"]) == ("Blue.", "Blue. Name one animal. Cat.")
    write_jsonl(tmp_path / "p.jsonl", [rec])
    row = load_dataset("json", data_files=str(tmp_path / "p.jsonl"), split="train")[0]
    # what cai trains on, decoded, is the file's prompt + chosen (+ EOS, which TRL appends too)
    enc = pair_tokens.encode_pair(tiny_tok, row, leading_space=leading_space)
    text = tiny_tok.decode(enc["prompt_ids"] + enc["chosen_ids"], skip_special_tokens=False)
    assert text == tiny_tok.bos_token + row["prompt"] + row["chosen"] + tiny_tok.eos_token
    # the same ids as from the raw answer (files written before this change still train the same)
    assert pair_tokens.encode_pair(tiny_tok, raw, leading_space=leading_space) == enc


# ---- cai --version, argument help, exit codes ------------------------------------------------

def test_cai_version_is_the_package_version(capsys):
    import tomllib

    from cai_lib.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    version = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"cai-stage1 {version}"


def test_every_argument_has_help_and_every_command_lists_its_exit_codes():
    import argparse

    from cai_lib.cli import EXIT_CODES, build_parser
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == set(EXIT_CODES)
    for name, sp in subs.choices.items():
        missing = [a.dest for a in sp._actions if not isinstance(a, argparse._HelpAction) and not a.help]
        assert not missing, f"cai {name}: no help for {missing}"
        text = sp.format_help()
        assert "exit codes:" in text and "  0    done" in text and "  1    bad input" in text, name
    assert "3    --strict" in subs.choices["run"].format_help()
    assert "a leak was found" in subs.choices["leakage"].format_help()


def test_training_shows_one_text_bar_of_steps(tiny_model_dir, tmp_path, capfd):
    """progress=True: a plain tqdm bar of optimizer steps on stderr (what `cai run` shows), no
    per-step dict printout and no notebook HTML table."""
    run = tmp_path / "bar"
    write_jsonl(run / "data" / "preference_pairs.jsonl", easy_pairs())
    train.train_dpo(load_dir(tiny_model_dir), pairs_path(run), run, small_cfg(max_steps=3, save_steps=3),
                    progress=True)
    err = capfd.readouterr().err
    frame = progress.last_frame(err)  # the newest bar on stderr: training's own
    assert frame and frame["desc"] == "train steps" and (frame["n"], frame["total"]) == ("3", "3")
    assert "'loss':" not in err and "{'loss'" not in err
