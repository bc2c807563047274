"""Run isolation and stage trust: run ids cannot leave the runs folder, `cai eval` cannot
overwrite a run's own results, and a stage refuses to build on unfinished or changed work."""

import json

import pytest

from cai_lib import manifest, runs, stages
from cai_lib.cli import main
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.evaluate import check_output_dir
from cai_lib.jsonl import write_json, write_jsonl


@pytest.mark.parametrize("bad", ["../..", "..", ".", "/tmp/x", "a/b", "a\\b", "", " x", "-x", "a..b", "x" * 200])
def test_run_ids_that_leave_the_runs_folder_are_refused(bad):
    with pytest.raises(CaiError, match="plain name"):
        runs.check_run_id(bad)


@pytest.mark.parametrize("bad", ["../..", "/tmp/elsewhere", "."])
def test_cai_run_refuses_a_path_as_run_id_and_writes_nothing(tmp_path, capsys, bad):
    code = main(["run", "--run-id", bad, "--stages", "04"])
    err = capsys.readouterr().err
    assert code == 1 and "plain name" in err and len(err.strip().splitlines()) == 1
    assert not runs.runs_root().exists()
    assert not (runs.base_dir() / "config.json").exists()


def test_good_run_ids_resolve_inside_the_runs_folder():
    for ok in ("r1", "2026-12-03_a.b", "gpu-small-h200"):
        assert runs.run_dir_for(ok).parent == runs.runs_root()


def _done_stage(run_dir, key, cfg, outputs: dict):
    paths = runs.run_paths(run_dir)
    for name, content in outputs.items():
        p = getattr(paths, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        if name == "adapter":
            p.mkdir(parents=True, exist_ok=True)
            (p / "adapter_config.json").write_text(content)
        else:
            p.write_text(content)
    stages.finish(run_dir, key, cfg)


def _fake_run(tmp_path, cfg=None):
    cfg = cfg or RunConfig()
    run_dir = runs.runs_root() / "r1"
    run_dir.mkdir(parents=True)
    write_json(run_dir / "config.json", cfg.to_dict())
    _done_stage(run_dir, "01", cfg, {"train_instructions": "{}\n", "eval_instructions": "{}\n",
                                     "overlap_report": "{}", "preference_pairs": "{}\n", "pair_stats": "{}"})
    _done_stage(run_dir, "02", cfg, {"training_log": "{}", "adapter": "{}"})
    _done_stage(run_dir, "03", cfg, {"eval_base": "{}\n", "eval_fewshot": "{}\n", "eval_trained": "{}\n",
                                     "eval_summary": "{}"})
    return run_dir, cfg


def test_stage_04_refuses_when_stage_03_was_interrupted(tmp_path):
    run_dir, cfg = _fake_run(tmp_path)
    assert stages.begin(run_dir, "04", cfg) is True
    manifest.update_stage(run_dir, "03", status="running")  # killed mid-way
    with pytest.raises(CaiError, match=r"stage 03 did not finish .*--stages 03,04"):
        stages.begin(run_dir, "04", cfg)


def test_stage_04_refuses_evaluation_files_changed_after_stage_03(tmp_path):
    run_dir, cfg = _fake_run(tmp_path)
    write_jsonl(runs.run_paths(run_dir).eval_trained, [{"id": "x"}])  # e.g. `cai eval -o` into results/
    with pytest.raises(CaiError, match=r"outputs changed since it finished \(eval_trained\)"):
        stages.begin(run_dir, "04", cfg)


def test_stage_04_refuses_evaluation_made_with_other_settings(tmp_path):
    run_dir, cfg = _fake_run(tmp_path)
    other = RunConfig(eval_max_new_tokens=64)
    with pytest.raises(CaiError, match="eval_max_new_tokens=48, now 64"):
        stages.begin(run_dir, "04", other)


def test_a_finished_stage_is_not_rewritten_unless_asked(tmp_path, capsys):
    run_dir, cfg = _fake_run(tmp_path)
    with pytest.raises(CaiError, match="already finished .*overwrite = True"):
        stages.begin(run_dir, "03", cfg)
    assert stages.begin(run_dir, "03", cfg, overwrite=True) is True
    assert manifest.load(run_dir)["stages"]["03"]["status"] == "running"


def test_report_stage_opened_on_a_finished_run_is_read_only(tmp_path, capsys):
    run_dir, cfg = _fake_run(tmp_path)
    _done_stage(run_dir, "04", cfg, {"stats": "{}", "gate": '{"verdict": "FAIL"}'})
    assert stages.begin(run_dir, "04", cfg, read_only_ok=True) is False
    assert "without rewriting" in capsys.readouterr().out


def test_newest_run_skips_runs_with_no_finished_stage(tmp_path):
    run_dir, _ = _fake_run(tmp_path)
    import os
    import time
    empty = runs.runs_root() / "zz-empty"
    empty.mkdir()
    later = time.time() + 100
    os.utime(empty, (later, later))
    assert runs.latest_run_dir() == run_dir


# ---- cai eval -o ---------------------------------------------------------------------------

@pytest.mark.parametrize("sub", ["results", "data", "adapter", "checkpoints", "results/mine"])
def test_eval_output_inside_a_runs_own_folders_is_refused(tmp_path, sub):
    run_dir, _ = _fake_run(tmp_path)
    with pytest.raises(CaiError, match="inside a run's"):
        check_output_dir(run_dir / sub, run_dir)


def test_eval_output_never_overwrites_without_force(tmp_path):
    run_dir, _ = _fake_run(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "stats.json").write_text("{}")
    with pytest.raises(CaiError, match="--force"):
        check_output_dir(out, run_dir)
    assert check_output_dir(out, run_dir, force=True) == out.resolve()
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(CaiError, match="existing file"):
        check_output_dir(f, run_dir)


def test_cai_eval_refuses_its_output_before_loading_any_model(tmp_path, capsys):
    run_dir, _ = _fake_run(tmp_path)
    items = tmp_path / "items.jsonl"
    write_jsonl(items, [{"id": "q1", "type": "qa", "instruction": "What is the capital of Peru?",
                         "checks": [{"kind": "contains_any", "values": ["Lima"]}]}])
    write_jsonl(runs.run_paths(run_dir).train_instructions,
                [{"id": "t1", "type": "qa", "instruction": "Name a prime number below ten.",
                  "checks": [{"kind": "contains_any", "values": ["7"]}]}])
    code = main(["eval", "--run", str(run_dir), "--items", str(items), "-o", str(run_dir / "results")])
    err = capsys.readouterr().err
    assert code == 1 and "inside a run's results/" in err and len(err.strip().splitlines()) == 1


# ---- cai run / cai train argument checks ---------------------------------------------------

@pytest.mark.parametrize("stages_arg", [",", "00,,01", " ", "00,00"])
def test_stage_lists_that_name_nothing_or_twice_are_refused(capsys, stages_arg):
    code = main(["run", "--stages", stages_arg])
    err = capsys.readouterr().err
    assert code == 1 and "--stages" in err and len(err.strip().splitlines()) == 1


def test_num_processes_zero_is_refused(tmp_path, capsys):
    code = main(["train", "--run", str(tmp_path), "--num-processes", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "--num-processes 0" in err


def test_set_override_with_a_bad_value_is_refused_before_anything_is_written(capsys):
    code = main(["run", "--run-id", "r9", "--set", "trust_remote_code='false'"])
    err = capsys.readouterr().err
    assert code == 1 and "drop the quotes" in err
    assert not (runs.runs_root() / "r9").exists()


def test_output_piped_into_a_closed_reader_exits_quietly(tmp_path):
    import subprocess
    import sys
    recs = tmp_path / "r.jsonl"
    # one prompt format per record: the printed summary is far larger than a pipe's buffer
    write_jsonl(recs, [{"id": f"q{i}", "type": "qa", "instruction": "Say yes.", "response": "Yes.",
                        "finish_reason": "eos", "format": f"f{i}", "checks": [{"kind": "yes_no", "value": "yes"}]}
                       for i in range(3000)])
    cmd = f"{sys.executable} -m cai_lib.cli score {recs} | head -c 10 >/dev/null; echo rc=${{PIPESTATUS[0]}} >&2"
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert "rc=141" in r.stderr  # the writer saw the closed pipe and stopped quietly


def test_full_disk_during_a_stage_is_one_line_and_the_manifest_says_failed(tmp_path, monkeypatch, capsys):
    """Simulated ENOSPC inside the stage (papermill raises) and again when recording it."""
    import errno

    import papermill

    from cai_lib import driver

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "data/generations.jsonl")
    monkeypatch.setattr(papermill, "execute_notebook", full_disk)
    code = main(["run", "--run-id", "r2", "--stages", "01"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert manifest.load(runs.runs_root() / "r2")["stages"]["01"]["status"] == "failed"

    real_update = manifest.update_stage

    def update_fails_on_failure(run_dir, key, **fields):
        if fields.get("status") == "failed":
            raise OSError(errno.ENOSPC, "No space left on device", "manifest.json")
        return real_update(run_dir, key, **fields)
    monkeypatch.setattr(manifest, "update_stage", update_fails_on_failure)
    code = main(["run", "--run-id", "r3", "--stages", "01"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "could not record stage 01" in captured.out
    assert driver  # the driver module is what papermill was patched under


# ---- fingerprints: content, not names ------------------------------------------------------

def test_editing_the_baseline_items_file_reruns_stage_00(tmp_path):
    from cai_lib import driver
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a"}\n')
    cfg = RunConfig(baseline_items=str(items))
    st = stages.stage("00")
    paths = runs.run_paths(tmp_path / "run")
    nb = driver.NOTEBOOK_DIR / "00_baseline.ipynb"
    fp = driver.fingerprint(st, nb, stages.stage_params(st, cfg), cfg, paths)
    prev = {"status": "done", "fingerprint": fp}
    assert driver._why_run(st, fp, prev, None) is None
    items.write_text('{"id": "b"}\n')  # same name, new content
    fp2 = driver.fingerprint(st, nb, stages.stage_params(st, cfg), cfg, paths)
    assert driver._why_run(st, fp2, prev, None) == "inputs changed: baseline_items"
    cfg3 = RunConfig(baseline_items=str(items), baseline_max_new_tokens=12)
    fp3 = driver.fingerprint(st, nb, stages.stage_params(st, cfg3), cfg3, paths)
    assert driver._why_run(st, fp3, prev, None) == "parameters changed: baseline_max_new_tokens"
    assert driver._why_run(st, fp, prev, "did not finish (status 'running': interrupted?)").startswith("did not")
    assert driver._why_run(st, fp, {}, None) == "never ran"


def test_dry_run_of_stage_03_is_not_recorded_as_done(tmp_path):
    run_dir, cfg = _fake_run(tmp_path)
    stages.finish(run_dir, "03", cfg, status="dry_run")
    with pytest.raises(CaiError, match="stage 03 did not finish \\(status 'dry_run'"):
        stages.begin(run_dir, "04", cfg)


def test_stage_kernels_share_a_compile_cache_next_to_the_runs(tmp_path, monkeypatch):
    """torch's compile caches live under $CAI_BASE_DIR (kept with the runs), unless the user set them."""
    import os

    from cai_lib import driver
    monkeypatch.setenv("CAI_BASE_DIR", str(tmp_path))
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(var, "placeholder")  # recorded, so the test leaves the environment as it was
        monkeypatch.delenv(var)
    driver.use_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "torch-compile" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "torch-compile" / "triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    driver.use_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"  # a user's own setting wins
