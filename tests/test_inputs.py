"""Bad input is refused in one line (file, line/field, fix), never a traceback, and a
failed write leaves no file behind; a regex check cannot hang the scorer (issue 11)."""

import errno
import json
import os
import re
import time
from pathlib import Path

import pytest

from cai_lib import checks, jsonl, safe_regex, scoring
from cai_lib.cli import main
from cai_lib.errors import CaiError
from cai_lib.items import load_items, starter_items_path
from cai_lib.stats import stats_files

DEEP = '{"id": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
HUGE_INT = '{"id": "a", "n": ' + "7" * 5000 + "}"


def item(**kw):
    base = {"id": "qa-1", "type": "qa", "instruction": "Capital of France?",
            "checks": [{"kind": "contains_any", "values": ["Paris"]}]}
    base.update(kw)
    return base


def response(**kw):
    return {**item(), "response": "Paris.", "finish_reason": "eos", **kw}


def write_lines(path, lines):
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def write_rows(path, rows):
    return write_lines(path, [json.dumps(r) for r in rows])


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


def no_temp_files(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")] == []


# ----------------------------------------------------------------------- regex time limit

def test_catastrophic_regex_fails_the_check_within_the_time_limit(monkeypatch):
    monkeypatch.setattr(safe_regex, "REGEX_TIMEOUT_S", 0.2)
    rec = response(id="gen-7", response="a" * 40 + "b",
                   checks=[{"kind": "min_words", "n": 1}, {"kind": "regex", "pattern": "(a|aa)+$"}])
    t0 = time.process_time()
    out = scoring.score_record(rec)
    spent = time.process_time() - t0
    assert spent < 2.0  # one search on the response; the cut is the same text, not re-run
    assert out["strict"] is False and out["loose"] is False
    assert out["failures"] == ["regex"] and out["loose_failures"] == ["regex"]
    (note,) = out["check_errors"]
    for part in ("id gen-7", "checks[1]", "'(a|aa)+$'", "0.2 s", "41-character response", "counted as failed"):
        assert part in note, note
    summary = scoring.summarize([out, scoring.score_record(response())])
    assert summary["check_errors"] == 1


def test_timeout_in_the_loose_cut_is_named_as_such(monkeypatch):
    monkeypatch.setattr(safe_regex, "REGEX_TIMEOUT_S", 0.1)
    rec = response(response="a" * 30 + "b\n\nmore", checks=[{"kind": "regex", "pattern": "(a|aa)+$"}])
    notes = scoring.score_record(rec)["check_errors"]
    assert len(notes) == 2 and "response" in notes[0] and "loose cut" in notes[1]


def test_nested_quantifier_from_the_issue_is_fast_and_correct():
    # stdlib re needs ~60 s for this; the regex package recognises the repeat and
    # answers at once, so no time limit is even reached.
    check = {"kind": "regex", "pattern": "(a+)+$"}
    t0 = time.perf_counter()
    assert not checks.check_passes(check, "a" * 28 + "b")
    assert checks.check_passes(check, "a" * 28)
    assert time.perf_counter() - t0 < 1.0


def test_check_passes_counts_a_timeout_as_failed(monkeypatch):
    monkeypatch.setattr(safe_regex, "REGEX_TIMEOUT_S", 0.1)
    assert checks.check_passes({"kind": "regex", "pattern": "(a|aa)+$"}, "a" * 60) is True  # matches at once
    assert checks.check_passes({"kind": "regex", "pattern": "(a|aa)+$"}, "a" * 60 + "b") is False


def test_records_without_a_timeout_keep_their_shape():
    out = scoring.score_record(response(checks=[{"kind": "regex", "pattern": r"\bparis\b"}]))
    assert "check_errors" not in out and out["strict"]
    assert "check_errors" not in scoring.summarize([out])


def test_item_patterns_match_exactly_as_stdlib_re():
    patterns = [c["pattern"] for it in load_items(starter_items_path()) for c in it["checks"]
                if c["kind"] == "regex"]
    patterns += [r"!\s*$", r"^\W*today\b", r"\d{3}-\d{4}", r"(?-i:\bHELLO\b)", r"^(yes|no)\b",
                 r"colou?r", r"\bC\+\+", r"[A-Z][a-z]+ [A-Z]", r"(?m)^- ", r"(?s)a.*z", r"\w+@\w+\.com"]
    texts = ["Hello there!", "TODAY is sunny", "  today!", "call 555-1234", "HELLO", "hello", "Yes.",
             "no way", "colour", "I like C++", "New York", "x\n- item", "a\nb\nz", "me@site.com",
             "The sky is blue.", "straße Σίσυφος ﬁne", "", "zebra", "3 apples", "\u00e9t\u00e9 ǅ"]
    assert len(patterns) >= 15
    for p in patterns:
        for t in texts:
            want = re.search(p, t, re.IGNORECASE) is not None
            assert checks.check_passes({"kind": "regex", "pattern": p}, t) is want, (p, t)


@pytest.mark.parametrize("pattern, needle", [
    (r"\p{L}+", "bad escape"),                 # regex-only syntax: not the re language DESIGN promises
    ("a{99999999}", "multiply to at most"),   # regex would unroll it and exhaust memory
    ("(?:a{200}){100}", "multiply to at most"),
    ("x{e<=1}", "fuzzy-match"),               # literal to re, "x with one error" to regex
    ("(unclosed", "valid regular expression"),
])
def test_unsafe_or_foreign_patterns_are_refused_at_item_load(tmp_path, pattern, needle):
    path = write_rows(tmp_path / "items.jsonl", [item(), item(id="qa-2", checks=[{"kind": "regex", "pattern": pattern}])])
    with pytest.raises(CaiError) as e:
        load_items(path)
    msg = str(e.value)
    assert f"{path}:2 (id qa-2)" in msg and "checks[0].pattern" in msg and needle in msg, msg


def test_safe_patterns_with_counts_and_literal_braces_are_accepted():
    for p in [r"\d{4}", "(?:a{100}){100}", r"\{e<=1\}", "[{]e<=1[}]", "{}", "a{0,50000}"]:
        checks.validate_checks([{"kind": "regex", "pattern": p}], "x")
    assert checks.check_passes({"kind": "regex", "pattern": r"\{e<=1\}"}, "see {e<=1}")
    assert not checks.check_passes({"kind": "regex", "pattern": r"x\{e<=1\}"}, "y")


def test_cli_score_with_a_catastrophic_pattern_finishes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(safe_regex, "REGEX_TIMEOUT_S", 0.2)
    rows = [response(id=f"r{i}", response="a" * 30 + "!", checks=[{"kind": "regex", "pattern": "(a|aa)+$"}])
            for i in range(3)]
    src, out = write_rows(tmp_path / "r.jsonl", rows), tmp_path / "scored.jsonl"
    assert main(["score", src, "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["check_errors"] == 3 and summary["strict"] == 0.0
    assert all("id r" in r["check_errors"][0] for r in jsonl.read_jsonl(out))


# ----------------------------------------------------------------------- unreadable JSON

@pytest.mark.parametrize("line, needle", [
    (DEEP, "nested too deeply"),
    (HUGE_INT, "number in it is too long"),
    ('{"id": "a", "response": "\\ud800"}', "unpaired UTF-16 surrogate"),
    ("[1, 2]", "expected a JSON object"),
    ('{"id": "a",', "not valid JSON"),
])
def test_read_jsonl_refuses_in_one_line_naming_the_line(tmp_path, line, needle):
    path = write_lines(tmp_path / "x.jsonl", ['{"id": "ok"}', line])
    with pytest.raises(CaiError) as e:
        jsonl.read_jsonl(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:2:") and needle in msg and "\n" not in msg, msg[:300]
    assert len(msg) < 400


def test_non_utf8_names_the_line_and_a_bom_is_accepted(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a"}\n{"id": "caf\xe9"}\n')
    with pytest.raises(CaiError, match=r"bad.jsonl:2: not UTF-8 text \(byte 0xe9\)"):
        jsonl.read_jsonl(bad)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n')
    assert jsonl.read_jsonl(bom) == [{"id": "a"}]


def test_torn_multibyte_tail_is_dropped_like_any_torn_line(tmp_path):
    path = tmp_path / "gen.jsonl"
    jsonl.append_jsonl(path, [{"id": 1, "t": "caf\u00e9"}, {"id": 2, "t": "na\u00efve"}])
    whole = path.read_bytes()
    path.write_bytes(whole + '{"id": 3, "t": "\u00e9'.encode()[:-1])  # killed inside "é"
    assert [r["id"] for r in jsonl.read_jsonl(path, tolerate_torn_tail=True)] == [1, 2]
    with pytest.raises(CaiError, match=r"gen.jsonl:3: not UTF-8"):
        jsonl.read_jsonl(path)
    jsonl.append_jsonl(path, [{"id": 3, "t": "x"}])  # resume: 0 lost, 0 duplicated
    assert [r["id"] for r in jsonl.read_jsonl(path)] == [1, 2, 3]


@pytest.mark.parametrize("content, needle", [
    (DEEP.encode(), "nested too deeply"),
    (HUGE_INT.encode(), "too long"),
    (b'{"a": "\xff"}', "not UTF-8"),
    (b'{"a": ', "not valid JSON"),
])
def test_read_json_refuses_in_one_line(tmp_path, content, needle):
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(CaiError) as e:
        jsonl.read_json(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_reading_a_folder_or_a_name_too_long_is_one_line(tmp_path):
    with pytest.raises(CaiError, match="is a folder"):
        jsonl.read_json(tmp_path)
    with pytest.raises(CaiError, match="cannot read"):
        jsonl.read_jsonl(tmp_path / ("x" * 300 + ".jsonl"))


# ----------------------------------------------------------------------- item validation

@pytest.mark.parametrize("bad, needle", [
    (item(id=None), "field 'id' is null"),
    (item(id=["qa", 1]), "field 'id' is a list (['qa', 1])"),
    (item(id=7), "field 'id' is a number (7)"),
    (item(instruction=None), "field 'instruction' is null"),
    (item(instruction=["Capital?"]), "field 'instruction' is a list"),
    (item(instruction=12), "field 'instruction' is a number"),
    (item(type=["qa"]), "field 'type' is ['qa']"),
    (item(checks=[{"kind": ["regex"], "pattern": "x"}]), "'checks[0].kind' is ['regex']"),
])
def test_bad_item_fields_are_one_line(tmp_path, bad, needle):
    path = write_rows(tmp_path / "items.jsonl", [item(id="qa-0"), bad])
    with pytest.raises(CaiError) as e:
        load_items(path)
    assert f"{path}:2" in str(e.value) and needle in str(e.value), str(e.value)


def test_duplicate_item_ids_name_both_lines(tmp_path):
    path = write_rows(tmp_path / "items.jsonl", [item(), item(id="qa-2"), item()])
    with pytest.raises(CaiError, match=r"items.jsonl:3: field 'id' 'qa-1' duplicates line 1 — give every item a unique id"):
        load_items(path)


# ----------------------------------------------------------------------- writes

def test_write_on_a_full_disk_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(jsonl.os, "fsync", full)
    with pytest.raises(CaiError) as e:
        jsonl.write_jsonl(target, [{"id": 1}])
    assert str(e.value).startswith(f"{target}: cannot write (no space left on device)")
    assert target.read_text() == "old\n" and no_temp_files(tmp_path)


def test_write_refuses_folders_and_devices_without_touching_them(tmp_path):
    with pytest.raises(CaiError, match="is a folder"):
        jsonl.write_json(tmp_path, {"a": 1})
    # A pipe stands in for a device such as /dev/null, which renaming over (as root)
    # would replace; the test must stay harmless if the guard ever regresses.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(CaiError, match="not a regular file"):
        jsonl.write_text(pipe, "x")
    assert pipe.is_fifo()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CaiError, match="cannot write"):
        jsonl.write_text(blocker / "sub" / "out.json", "x")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_append_to_dev_full_is_one_line():
    with pytest.raises(CaiError, match="/dev/full: cannot write \\(no space left on device\\)"):
        jsonl.append_jsonl("/dev/full", [{"id": 1}])


def test_append_on_a_full_disk_cuts_the_batch_back(tmp_path, monkeypatch):
    path = tmp_path / "gen.jsonl"
    jsonl.append_jsonl(path, [{"id": 1}, {"id": 2}])
    before = path.read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(jsonl.os, "fsync", full)
    with pytest.raises(CaiError, match="no space left"):
        jsonl.append_jsonl(path, [{"id": 3}, {"id": 4}])
    assert path.read_bytes() == before  # the batch is all or nothing: no torn or half batch
    monkeypatch.setattr(jsonl.os, "fsync", real_fsync)
    jsonl.append_jsonl(path, [{"id": 3}, {"id": 4}])
    assert [r["id"] for r in jsonl.read_jsonl(path)] == [1, 2, 3, 4]


# ----------------------------------------------------------------------- cai score end to end

@pytest.mark.parametrize("lines, needles", [
    ([DEEP], [":1:", "nested too deeply"]),
    ([HUGE_INT], [":1:", "too long"]),
    ([json.dumps(response(instruction=None))], [":1", "field 'instruction' must be a string, got NoneType"]),
    ([json.dumps(response(instruction=["a"]))], [":1", "field 'instruction' must be a string, got list"]),
    ([json.dumps(response(response=7))], ["field 'response' must be a string, got int"]),
    ([json.dumps(response()), json.dumps(response(checks=[{"kind": "regex", "pattern": "a{99999999}"}]))],
     [":2", "checks[0].pattern"]),
    ([], ["no response records", "empty"]),
])
def test_cli_score_bad_records(tmp_path, capsys, lines, needles):
    src = write_lines(tmp_path / "r.jsonl", lines)
    out = tmp_path / "scored.jsonl"
    code = main(["score", src, "-o", str(out)])
    one_line_error(capsys, code, "cai score: error:", src, *needles)
    assert not out.exists() and no_temp_files(tmp_path)


def test_cli_score_non_utf8(tmp_path, capsys):
    src = tmp_path / "r.jsonl"
    src.write_bytes(json.dumps(response()).encode() + b"\n\x80\n")
    one_line_error(capsys, main(["score", str(src)]), f"{src}:2: not UTF-8")


def test_cli_score_output_is_a_folder(tmp_path, capsys):
    src = write_rows(tmp_path / "r.jsonl", [response()])
    folder = tmp_path / "out"
    folder.mkdir()
    one_line_error(capsys, main(["score", src, "-o", str(folder)]), f"{folder}: is a folder")
    assert list(folder.iterdir()) == []


def test_cli_score_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch):
    src = write_rows(tmp_path / "r.jsonl", [response(), response(id="qa-2")])
    out = tmp_path / "scored.jsonl"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(jsonl.os, "fsync", full)
    one_line_error(capsys, main(["score", src, "-o", str(out)]), f"{out}: cannot write (no space left on device)")
    assert not out.exists() and no_temp_files(tmp_path)


def test_cli_score_output_is_a_device(tmp_path, capsys):
    # A pipe, not /dev/null: as root the old code renamed its temp file over the device.
    src = write_rows(tmp_path / "r.jsonl", [response()])
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    one_line_error(capsys, main(["score", src, "-o", str(pipe)]), f"{pipe}: is not a regular file")
    assert pipe.is_fifo() and no_temp_files(tmp_path)


# ----------------------------------------------------------------------- cai stats end to end

def scored(i, ok=True, **kw):
    return {"id": f"qa-{i}", "type": "qa", "instruction": f"q{i}", "strict": ok, **kw}


@pytest.mark.parametrize("base_lines, trained_lines, needles", [
    ([], [], ["b.jsonl: no scored records", "empty"]),
    ([json.dumps(scored(1))], ["", "   "], ["t.jsonl: no scored records"]),
    ([json.dumps(scored(i)) for i in range(5)], [json.dumps(scored(i + 3)) for i in range(5)],
     ["ids do not pair up", "3 only in", "qa-0, qa-1, qa-2", "same eval set"]),
    ([json.dumps({**scored(1), "id": ["qa", 1]})], [json.dumps(scored(1))], ["b.jsonl: record 1 field 'id' is ['qa', 1]"]),
    ([json.dumps({**scored(1), "id": None})], [json.dumps(scored(1))], ["record 1 field 'id' is None"]),
    ([DEEP], [json.dumps(scored(1))], ["b.jsonl:1: JSON nested too deeply"]),
    ([json.dumps(scored(1))], [HUGE_INT], ["t.jsonl:1: a number in it is too long"]),
    ([json.dumps(scored(1, ok="yes"))], [json.dumps(scored(1))], ["field 'strict' is 'yes'"]),
])
def test_cli_stats_bad_input_is_one_line(tmp_path, capsys, base_lines, trained_lines, needles):
    a = write_lines(tmp_path / "b.jsonl", base_lines)
    b = write_lines(tmp_path / "t.jsonl", trained_lines)
    one_line_error(capsys, main(["stats", a, b]), "cai stats: error:", *needles)
    with pytest.raises(CaiError):
        stats_files(a, b)


def test_cli_stats_non_utf8_and_folder(tmp_path, capsys):
    a = tmp_path / "b.jsonl"
    a.write_bytes(b"\xfe\xff\n")
    b = write_rows(tmp_path / "t.jsonl", [scored(1)])
    one_line_error(capsys, main(["stats", str(a), b]), f"{a}:1: not UTF-8")
    one_line_error(capsys, main(["stats", str(tmp_path), b]), f"{tmp_path}: is a folder")
