"""`cai` errors are one line on stderr with a non-zero exit, never a traceback."""

from cai_lib.cli import main


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def test_run_unknown_profile(capsys):
    code = main(["run", "--profile", "nope"])
    _one_line_error(capsys, code, "unknown profile 'nope'", "cpu-quick")


def test_run_profile_with_unknown_key(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("model: embedded:gemma-3-270m\nbatchsize: 4\n")
    code = main(["run", "--profile", str(p)])
    _one_line_error(capsys, code, str(p), "batchsize")


def test_run_malformed_profile(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("model: [unclosed\n")
    code = main(["run", "--profile", str(p)])
    _one_line_error(capsys, code, str(p), "not valid YAML")


def test_run_bad_value(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("quantization: 3bit\n")
    code = main(["run", "--profile", str(p)])
    _one_line_error(capsys, code, "quantization", "3bit")


def test_run_unknown_stage(tmp_path, capsys):
    code = main(["run", "--stages", "07"])
    _one_line_error(capsys, code, "unknown stage '07'")


def test_score_missing_file(tmp_path, capsys):
    code = main(["score", str(tmp_path / "missing.jsonl")])
    _one_line_error(capsys, code, "missing.jsonl", "not found")


def test_bad_stage_leaves_no_run_directory(tmp_path, capsys):
    from cai_lib.runs import runs_root
    main(["run", "--stages", "9"])
    assert not runs_root().exists() or not any(runs_root().iterdir())
