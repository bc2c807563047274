"""Leakage guard: exact and near duplicates caught, same-template-different-fact not."""

import json
import time

import pytest

from cai_lib import cli, split
from cai_lib.errors import CaiError
from cai_lib.fewshot import all_fewshot_instructions
from cai_lib.jsonl import read_json, write_json, write_jsonl
from cai_lib.items import sample_items
from cai_lib.split import find_leaks, overlap_report, verify_eval_set
from cai_lib.runs import run_paths


def item(i, instruction, answers=None, typ="qa"):
    checks = [{"kind": "contains_any", "values": answers}] if answers else [{"kind": "min_words", "n": 1}]
    return {"id": i, "type": typ, "instruction": instruction, "checks": checks}


FRANCE = item("t-fr", "What is the capital of France?", ["Paris"])
PERU = item("t-pe", "What is the capital of Peru?", ["Lima"])


@pytest.mark.parametrize("reference", [None, ()], ids=["shipped-corpus-df", "files-only-df"])
def test_template_case_separated(reference):
    # The design's two cases: a word added (leak) vs the same template with another fact.
    near = item("e-1", "What is the capital city of France?", ["Paris"])
    peru = item("e-2", "Q: What is the capital of Peru?", ["Lima"])
    leaks = find_leaks([FRANCE], [near, peru], reference=reference)
    assert [(x["eval_id"], x["other_id"], x["kind"]) for x in leaks] == [("e-1", "t-fr", "near")]
    assert find_leaks([PERU], [item("e-3", "What is the capital of France?", ["Paris"])], reference=reference) == []


def test_planted_exact_and_near_eval_vs_train():
    train = [FRANCE, PERU, item("t-3", "What is 3 plus 4?", ["7"])]
    evals = [
        item("e-exact", "  what is the CAPITAL of france  "),      # case/space/punctuation only
        item("e-drop", "Capital of Peru?"),                            # glue/frame words dropped: near-exact
        item("e-swap", "Which city is the capital of France?"),       # word swapped
        item("e-wrap", "Answer this question: What is 3 plus 4?"),    # new wrapper, same question
        item("e-other", "What is 3 plus 5?", ["8"]),                   # same template, other fact
        item("e-other2", "What is the capital of Japan?", ["Tokyo"]),
    ]
    got = {(x["eval_id"], x["other_id"], x["kind"]) for x in find_leaks(train, evals)}
    assert got == {("e-exact", "t-fr", "exact"), ("e-drop", "t-pe", "exact"), ("e-swap", "t-fr", "near"),
                   ("e-wrap", "t-3", "near")}


def test_planted_leaks_against_fewshot_examples():
    fewshot = list(all_fewshot_instructions())
    target = fewshot[0]  # "What is the capital of Japan?"
    evals = [item("e-fs-exact", target.upper() + "!!"), item("e-fs-near", target.replace("capital", "capital city")),
             item("e-ok", "What is the capital of Chile?", ["Santiago"])]
    leaks = find_leaks([FRANCE], evals, fewshot)
    got = {(x["eval_id"], x["source"], x["kind"]) for x in leaks}
    assert got == {("e-fs-exact", "fewshot", "exact"), ("e-fs-near", "fewshot", "near")}
    assert all(x["other_instruction"] == target for x in leaks)


def test_answer_veto_and_numbers():
    # Same thing, different facts: on words alone the pair looks alike (flagged without
    # checks); the checks' disjoint answers (yellow vs sour) clear it.
    color, taste = "Name the color of a lemon.", "What taste does a lemon have?"
    assert len(find_leaks([{"id": "t", "instruction": color}], [{"id": "e", "instruction": taste}])) == 1
    assert find_leaks([item("t", color, ["yellow"])], [item("e", taste, ["sour"])]) == []
    # Overlapping answers keep the flag (a rephrasing with the same answer is still a leak).
    assert len(find_leaks([item("t", color, ["yellow"])], [item("e", taste, ["sour", "yellow"])])) == 1
    # Repeated numbers count: "3 times 3" is not "3 times 4"; reversed operands with the same answer are.
    train = [item("t-33", "What is 3 times 3?", ["9"]), item("t-34", "What is 3 times 4?", ["12"])]
    evals = [item("e-34", "What is 4 times 3?", ["12"]), item("e-35", "What is 3 times 5?", ["15"])]
    assert {(x["eval_id"], x["other_id"]) for x in find_leaks(train, evals)} == {("e-34", "t-34")}


def test_real_pools_and_samples_are_leak_free():
    train, evals = split.train_pool(), split.eval_pool()
    fewshot = all_fewshot_instructions()
    assert find_leaks(train, evals, fewshot) == []
    for seed in range(3):
        assert find_leaks(sample_items(train, 1000, seed), sample_items(evals, 300, seed), fewshot) == []


def test_fast_enough_for_1000_by_300():
    train = sample_items(split.train_pool(), 1000, 0)
    evals = sample_items(split.eval_pool(), 300, 0)
    find_leaks(train[:5], evals[:5])  # warm the shipped-corpus cache
    t0 = time.perf_counter()
    find_leaks(train, evals, all_fewshot_instructions())
    assert time.perf_counter() - t0 < 2.0


def _files(tmp_path, train, evals):
    tp, ep = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    write_jsonl(tp, train)
    write_jsonl(ep, evals)
    return tp, ep


def test_overlap_report_contents(tmp_path):
    evals = [item("e-1", "What is the capital city of France?", ["Paris"])]
    tp, ep = _files(tmp_path, [FRANCE], evals)
    leaks = find_leaks([FRANCE], evals)
    rep = overlap_report(tp, ep, leaks, n_train=1, n_eval=1, n_fewshot=0)
    from cai_lib.jsonl import sha256_file
    assert rep["train_sha256"] == sha256_file(tp) and rep["eval_sha256"] == sha256_file(ep)
    assert "content words" in rep["method"] and rep["thresholds"]["near_jaccard"] == 0.4
    assert rep["counts"]["near"] == 1 and rep["clean"] is False
    pair = rep["flagged"][0]
    assert rep["n_flagged"] == 1
    assert {"eval_id", "other_id", "kind", "score", "eval_instruction", "other_instruction"} <= set(pair)


def test_cli_exit_codes(tmp_path, capsys):
    tp, ep = _files(tmp_path, [FRANCE], [item("e-1", "What is the capital of Peru?", ["Lima"])])
    out = tmp_path / "report.json"
    assert cli.main(["leakage", str(tp), str(ep), "--report", str(out)]) == 0
    assert read_json(out)["clean"] is True
    tp2, ep2 = _files(tmp_path / "b", [FRANCE], [item("e-1", "What is the capital city of France?", ["Paris"])])
    assert cli.main(["leakage", str(tp2), str(ep2), "--report", str(out)]) == 2
    assert read_json(out)["counts"]["flagged"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "instruction": "ok"}\n{not json\n')
    capsys.readouterr()
    assert cli.main(["leakage", str(tp), str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl:2" in err and len(err.splitlines()) == 1
    assert cli.main(["leakage", str(tmp_path / "missing.jsonl"), str(ep)]) == 1
    no_instr = tmp_path / "noinstr.jsonl"
    no_instr.write_text('{"id": "x"}\n')
    assert cli.main(["leakage", str(tp), str(no_instr)]) == 1


def _one_line_error(capsys, argv, *needles):
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_cli_refuses_empty_files_and_blank_instructions(tmp_path, capsys):
    # An empty side is nothing checked, not "clean".
    tp, ep = _files(tmp_path, [FRANCE], [item("e-1", "What is the capital of Peru?", ["Lima"])])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    _one_line_error(capsys, ["leakage", str(empty), str(ep)], "empty.jsonl", "train file holds no items")
    _one_line_error(capsys, ["leakage", str(tp), str(empty)], "empty.jsonl", "eval file holds no items")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"id": "a", "instruction": "ok"}\n{"id": "b", "instruction": "   "}\n')
    _one_line_error(capsys, ["leakage", str(tp), str(blank)], "blank.jsonl:2", "'instruction' is blank")
    number = tmp_path / "number.jsonl"
    number.write_text('{"id": "a", "instruction": 7}\n')
    _one_line_error(capsys, ["leakage", str(number), str(ep)], "number.jsonl:1", "'instruction' is int")


def test_cli_report_path_errors_are_one_line(tmp_path, capsys, monkeypatch):
    tp, ep = _files(tmp_path, [FRANCE], [item("e-1", "What is the capital of Peru?", ["Lima"])])
    folder = tmp_path / "reports"
    folder.mkdir()
    _one_line_error(capsys, ["leakage", str(tp), str(ep), "--report", str(folder)], "--report is a folder")
    _one_line_error(capsys, ["leakage", str(tp), str(ep), "--report", str(tp / "r.json")], "is a file, not a folder")
    _one_line_error(capsys, ["leakage", str(tp), str(ep), "--report", str(ep)], "would overwrite an input")
    # An unwritable place (permissions, full disk): the OS error in one line.
    def refuse(path, obj):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(split, "write_json", refuse)
    _one_line_error(capsys, ["leakage", str(tp), str(ep), "--report", str(tmp_path / "r.json")],
                    "cannot write the report (Permission denied)")
    assert not (tmp_path / "r.json").exists()


def _stage01(tmp_path):
    from cai_lib.config import RunConfig
    rp = run_paths(tmp_path / "run")
    split.write_split(rp, RunConfig(n_train_items=40, n_eval_items=20))
    return rp


def test_verify_eval_set_refusals(tmp_path):
    rp = _stage01(tmp_path)
    assert verify_eval_set(rp)["clean"]
    # Train file changed after the check -> hash mismatch.
    rp.train_instructions.write_text(rp.train_instructions.read_text() + json.dumps(FRANCE) + "\n")
    with pytest.raises(CaiError, match="train_sha256 does not match.*run stage 01"):
        verify_eval_set(rp)
    rp.train_instructions.unlink()
    with pytest.raises(CaiError, match="train instructions missing.*pass the train file"):
        verify_eval_set(rp)


def test_verify_eval_set_refuses_missing_or_leaky_report(tmp_path):
    rp = _stage01(tmp_path)
    rep = read_json(rp.overlap_report)
    rp.overlap_report.unlink()
    with pytest.raises(CaiError, match="overlap report missing"):
        verify_eval_set(rp)
    write_json(rp.overlap_report, dict(rep, clean=False, n_flagged=1, flagged=[{"eval_id": "x"}]))
    with pytest.raises(CaiError) as exc:
        verify_eval_set(rp)
    assert exc.value.exit_code == 2 and "leaks" in str(exc.value)
