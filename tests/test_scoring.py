"""Scorer: every check kind and detector passes and fails where the design says, and
strict / loose / form follow the contract in DESIGN.md."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cai_lib import checks, safe_regex, scoring
from cai_lib.checks import (
    CHECK_KINDS, check_passes, count_items, count_sentences, last_number, validate_checks, word_count,
)
from cai_lib.cli import main as cai_main
from cai_lib.errors import CaiError
from cai_lib.scoring import DETECTORS, detect, loose_cut, score_file, score_record, score_records, summarize


def ok(kind, text, **param):
    return check_passes({"kind": kind, **param}, text)


def rec(response, checks=(), instruction="Answer this question: What is the capital of France?",
        finish_reason="eos", **extra):
    return {"id": extra.pop("id", "qa-0001"), "type": extra.pop("type", "qa"), "instruction": instruction,
            "checks": list(checks), "response": response, "finish_reason": finish_reason, **extra}


PARIS = {"kind": "contains_any", "values": ["Paris"]}


# ----------------------------------------------------------------------------- words

def test_word_is_a_token_with_a_letter_or_digit():
    assert word_count("-- Hello, world! 42 -- ...") == 3
    assert word_count("") == 0
    assert word_count("  \n\t ") == 0


def test_catalogue_matches_design():
    assert set(CHECK_KINDS) == {"contains_any", "contains_all", "excludes", "max_words", "min_words",
                                "sentences", "items", "number", "yes_no", "regex"}
    assert DETECTORS == ("empty", "echo", "continuation")


# ----------------------------------------------------------------------------- contains_*

@pytest.mark.parametrize("text", ["Paris.", "It is PARIS", "paris, of course", "(Paris)", "Paris's museums",
                                  "\u201cParis\u201d"])
def test_contains_any_passes_whole_word_case_insensitive(text):
    assert ok("contains_any", text, values=["Lyon", "Paris"])


@pytest.mark.parametrize("text", ["Parisian food", "Lyon", "", "sparis"])
def test_contains_any_fails_without_whole_word(text):
    assert not ok("contains_any", text, values=["Paris"])


def test_phrase_matching_normalizes_whitespace():
    assert ok("contains_any", "I live in New\n  York city", values=["new york"])
    assert not ok("contains_any", "New Yorker", values=["new york"])


@pytest.mark.parametrize("value,text,expected", [
    ("C++", "I write C++ daily.", True),
    ("C++", "I write C daily.", False),
    ("U.S.", "She moved to the U.S. last year", True),
    ("U.S.", "the U.S.A", False),
    ("H2O", "Water is H2O.", True),
    ("3", "The answer is 3.", True),
    ("3", "It is 3.5 metres", False),
    ("3", "about 3,000 people", False),
    ("3", "13 cats", False),
    ("5", "1.5 litres", False),
    ("0", "0\u00b0C", True),
    ("0", "100 degrees", False),
    ("twenty-four", "There are twenty-four hours.", True),
    ("don't", "I don't know", True),
])
def test_phrase_boundaries_with_punctuation_and_digits(value, text, expected):
    assert ok("contains_any", text, values=[value]) is expected


def test_contains_all():
    assert ok("contains_all", "Red and blue are colors.", values=["red", "BLUE"])
    assert not ok("contains_all", "Red and green.", values=["red", "blue"])
    assert not ok("contains_all", "Reddish blue", values=["red", "blue"])


def test_excludes():
    assert ok("excludes", "The sun is bright and warm.", values=["hot"])
    assert ok("excludes", "We stayed at a hotel.", values=["hot"])  # whole words only
    assert not ok("excludes", "The sun is HOT.", values=["hot", "cold"])


# ----------------------------------------------------------------------------- size checks

def test_max_and_min_words_boundaries():
    five = "One two three four five."
    assert ok("max_words", five, n=5) and not ok("max_words", five, n=4)
    assert ok("min_words", five, n=5) and not ok("min_words", five, n=6)
    assert ok("max_words", "- - ! ?", n=0)  # punctuation is not a word


@pytest.mark.parametrize("text,n", [
    ("Cats purr.", 1),
    ("Cats purr", 1),                          # a lone unterminated sentence still counts
    ("Cats purr. Dogs bark!  Do birds sing?", 3),
    ("Pi is about 3.14 in value.", 1),         # decimal point
    ("Dr. Smith met Mr. Jones at 5 p.m. today.", 1),
    ("J. K. Rowling wrote Harry Potter.", 1),  # initials
    ("Wow!! Really?!", 2),
    ('He said "hi." Then he left.', 2),
    ("Cats purr. They", 2),                    # a cut-off second sentence is a second sentence
    ("...", 0),
    ("", 0),
    ("First line.\nSecond line.", 2),
])
def test_sentence_count(text, n):
    assert count_sentences(text) == n


def test_sentences_check():
    assert ok("sentences", "The Moon orbits Earth. It has no air.", n=2)
    assert not ok("sentences", "The Moon orbits Earth. It has no air.", n=1)
    assert not ok("sentences", "The Moon orbits Earth.", n=2)


@pytest.mark.parametrize("text,n", [
    ("- apple\n- banana\n- cherry", 3),
    ("* apple\n* banana", 2),
    ("\u2022 apple\n\u2022 banana\n\u2022 cherry\n\u2022 plum", 4),
    ("1. apple\n2. banana\n3. cherry", 3),
    ("1) apple\n2) banana", 2),
    ("Here are three fruits:\n1. apple\n2. banana\n3. cherry\nEnjoy!", 3),
    ("apple, banana, and cherry.", 3),
    ("Apple, banana and cherry", 3),
    ("apple or banana", 2),
    ("Sure! Three fruits are apple, banana, cherry.", 3),
    ("Here are three fruits:\napple, banana, cherry", 3),
    ("apple\nbanana\ncherry", 3),
    ("apple", 1),
    ("**Fruits** are tasty", 1),                 # bold markers are not bullets
    ("", 0),
])
def test_item_count(text, n):
    assert count_items(text) == n


def test_items_check():
    assert ok("items", "Red, yellow and blue.", n=3)
    assert not ok("items", "Red and blue.", n=3)
    assert not ok("items", "- red\n- yellow\n- blue\n- green", n=3)


# ----------------------------------------------------------------------------- number

@pytest.mark.parametrize("text,value", [
    ("56", 56), ("7 times 8 is 56.", 56), ("The answer is fifty-six... no wait, 56", 56),
    ("It is -5 degrees.", -5), ("x = -2", -2), ("Pi is about 3.14.", 3.14),
    ("It costs $1,000.", 1000), ("1,2,3", 3), ("Ranges 3-5", 5),
    ("There are seven days.", 7), ("Twenty", 20), ("I have SEVENTEEN cats", 17), ("zero", 0),
    ("50%", 50),
])
def test_last_number(text, value):
    assert last_number(text) == pytest.approx(value)


def test_last_number_none_and_compound_words():
    assert last_number("no digits here") is None
    assert last_number("twenty-one") is None  # not 1: number words stop at twenty
    assert last_number("alone") is None       # "one" only as a whole word


def test_number_check():
    assert ok("number", "Twelve divided by four is three.", value=3)
    assert ok("number", "The result is 2.50", value=2.5)
    assert not ok("number", "The answer is 56 (7 x 8).", value=56)  # the LAST number counts
    assert not ok("number", "I don't know.", value=56)


# ----------------------------------------------------------------------------- yes_no, regex

@pytest.mark.parametrize("text,value", [
    ("Yes.", "yes"), ("yes, it is", "yes"), ("No!", "no"), ("Well... no, not really. Yes?", "no"),
    ("NO", "no"), ("I think YES", "yes"),
])
def test_yes_no_passes(text, value):
    assert ok("yes_no", text, value=value)


@pytest.mark.parametrize("text,value", [
    ("No.", "yes"), ("Not at all", "no"), ("Nope", "no"), ("Yesterday", "yes"), ("", "yes"),
    ("There is no-one", "no"),
])
def test_yes_no_fails(text, value):
    assert not ok("yes_no", text, value=value)


def test_regex_check():
    assert ok("regex", "Hello there!", pattern=r"!\s*$")
    assert not ok("regex", "Hello there.", pattern=r"!\s*$")
    assert ok("regex", "TODAY is sunny", pattern=r"^today\b")          # case-insensitive
    assert ok("regex", "HELLO", pattern=r"(?-i:\bHELLO\b)")            # a pattern may opt out
    assert not ok("regex", "hello", pattern=r"(?-i:\bHELLO\b)")


# ----------------------------------------------------------------------------- detectors

def test_empty_detector():
    instr = "Write one sentence about dogs."
    assert "empty" in detect("", instr)
    assert "empty" in detect("  \n ... !", instr)
    assert "empty" not in detect("Dogs bark.", instr)
    assert "empty" not in detect("42", instr)


def test_echo_detector_is_whitespace_and_case_normalized():
    instr = "Answer this question: What is the capital of France?"
    assert "echo" in detect("answer  this question:\nWhat is the capital of France? Paris", instr)
    assert "echo" not in detect("What is the capital of France? Paris.", instr)  # a partial restatement


@pytest.mark.parametrize("response", [
    "Paris.\nQ: What is the capital of Spain?",
    "Paris.\n\nQuestion: What is 2+2?",
    "Paris.\n  Instruction: Write a poem.",
    "Paris.\nHuman: thanks",
    "Paris.\nuser: next one",
    "Paris.\n### Instruction:\nWrite a poem.",
    "Paris.\nAnswer this question: What is the capital of Spain?",   # the instruction's first three words
    "Paris.\nanswer THIS question - what is 2+2?",
    "\nQ: What is the capital of Spain?",                             # a new prompt straight away
    "Paris.\nQuestion 2: What is the capital of Spain?",
    "Paris.\n**Q3:** What is 2+2?",
])
def test_continuation_detector_fires(response):
    assert "continuation" in detect(response, "Answer this question: What is the capital of France?")


@pytest.mark.parametrize("response", [
    "Paris is the capital of France.",
    "Q: What is the capital of France? A: Paris.",    # the first line continues the prompt's own line
    "Paris.\nIt has been the capital for centuries.\nA question: why?",
    "Paris.\nAnswer: Paris",
    "Paris.\nAnswer this: it's Paris.",               # only two of the first three words
    "Paris.\nQuestions like this are easy.\nUsers: many.\nQuote: none",
])
def test_continuation_detector_quiet(response):
    assert "continuation" not in detect(response, "Answer this question: What is the capital of France?")


def test_loose_cut():
    instr = "Answer this question: What is the capital of France?"
    assert loose_cut("Paris.\nIt is big.\n\nBerlin.", instr) == "Paris.\nIt is big."
    assert loose_cut("Paris.\nQ: Capital of Spain?\nA: Madrid", instr) == "Paris."
    assert loose_cut("\n\n  Paris.\n \nMore", instr) == "Paris."  # leading blank lines are not the end


# ----------------------------------------------------------------------------- strict / loose / form

LONG_ANSWER = ("The capital of France is Paris. " + " ".join(
    f"Paris has many famous places to visit, museum number {i} among them." for i in range(40)))


def test_long_correct_ended_answer_passes_strict():
    assert word_count(LONG_ANSWER) > 400
    r = score_record(rec(LONG_ANSWER, [PARIS], finish_reason="eos"))
    assert (r["strict"], r["loose"], r["form"]) == (True, True, True)
    assert r["failures"] == [] and r["loose_failures"] == []


def test_stop_finish_reason_counts_as_ended():
    r = score_record(rec("Paris.", [PARIS], finish_reason="stop"))
    assert r["strict"] and r["form"]


def test_length_fails_strict_and_form_but_can_pass_loose():
    r = score_record(rec("Paris.\n\nThe city of Paris is known for", [PARIS], finish_reason="length"))
    assert r["strict"] is False and r["form"] is False and r["loose"] is True
    assert r["failures"] == ["finish_reason=length"]
    assert r["loose_failures"] == []


def test_wrong_but_well_formed_answer_passes_form_only():
    r = score_record(rec("Lyon.", [PARIS]))
    assert (r["strict"], r["loose"], r["form"]) == (False, False, True)
    assert r["failures"] == ["contains_any"] and r["loose_failures"] == ["contains_any"]


def test_echo_fails_all_three():
    instr = "Answer this question: What is the capital of France?"
    r = score_record(rec(instr + " Paris.", [PARIS], instruction=instr))
    assert (r["strict"], r["loose"], r["form"]) == (False, False, False)
    assert r["failures"] == ["echo"] and r["loose_failures"] == ["echo"]


def test_continuation_fails_strict_and_form_loose_cuts_it_off():
    r = score_record(rec("Paris.\nQ: What is the capital of Spain?\nA: Madrid.", [PARIS]))
    assert (r["strict"], r["loose"], r["form"]) == (False, True, False)
    assert r["failures"] == ["continuation"]


def test_continuation_by_instruction_opening():
    instr = "Complete this sentence: The sun rises in the"
    checks = [{"kind": "contains_any", "values": ["east"]}]
    r = score_record(rec("east.\nComplete this sentence: The sun sets in the west.", checks, instruction=instr))
    assert r["failures"] == ["continuation"] and r["loose"] and not r["strict"]


def test_loose_is_cut_at_the_first_blank_line():
    checks = [PARIS, {"kind": "excludes", "values": ["Berlin"]}, {"kind": "sentences", "n": 1}]
    r = score_record(rec("Paris is the capital.\n\nBerlin is the capital of Germany.", checks))
    assert r["strict"] is False and r["loose"] is True
    assert r["failures"] == ["excludes", "sentences"]


def test_loose_fails_when_the_answer_is_after_the_blank_line():
    r = score_record(rec("Hmm, let me think.\n\nParis.", [PARIS]))
    assert r["strict"] is True and r["loose"] is False and r["loose_failures"] == ["contains_any"]


def test_leading_newline_is_fine_for_strict_and_loose():
    r = score_record(rec("\nParis.", [PARIS]))
    assert r["strict"] and r["loose"] and r["form"]


def test_empty_response():
    r = score_record(rec("", [PARIS]))
    assert (r["strict"], r["loose"], r["form"]) == (False, False, False)
    assert r["failures"] == ["contains_any", "empty"]
    assert r["loose_failures"] == ["contains_any", "empty"]


def test_failures_are_named_once_in_order():
    checks = [PARIS, {"kind": "contains_any", "values": ["France"]}, {"kind": "max_words", "n": 1}]
    r = score_record(rec("Lyon is big.\nQ: next", checks, finish_reason="length"))
    assert r["failures"] == ["contains_any", "max_words", "continuation", "finish_reason=length"]


def test_no_checks_means_form_equals_strict():
    r = score_record(rec("Anything at all.", []))
    assert r["strict"] and r["form"] and r["loose"]


def test_score_record_copies_and_keeps_fields():
    original = rec("Paris.", [PARIS], format="qa")
    r = score_record(original)
    assert "strict" not in original
    assert r["format"] == "qa" and r["id"] == "qa-0001"


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change,needle", [
    (lambda r: r.pop("finish_reason"), "'finish_reason'"),
    (lambda r: r.update(finish_reason="max_tokens"), "'finish_reason' is 'max_tokens'"),
    (lambda r: r.pop("response"), "'response'"),
    (lambda r: r.update(response=None), "'response' must be a string"),
    (lambda r: r.pop("instruction"), "'instruction'"),
    (lambda r: r.pop("checks"), "'checks'"),
    (lambda r: r.update(checks=[{"kind": "contains_some", "values": ["x"]}]), "'checks[0].kind'"),
])
def test_bad_records_raise_one_line_errors(change, needle):
    r = rec("Paris.", [PARIS], id="qa-0042")
    change(r)
    with pytest.raises(CaiError) as exc:
        score_record(r, where="resp.jsonl:7")
    msg = str(exc.value)
    assert needle in msg and "resp.jsonl:7" in msg and "\n" not in msg
    assert "qa-0042" in msg


@pytest.mark.parametrize("check,needle", [
    ({"kind": "nope"}, "'checks[0].kind' is 'nope'"),
    ({"values": ["x"]}, "'checks[0].kind' is None"),
    ({"kind": "contains_any"}, "'checks[0].values' is missing"),
    ({"kind": "contains_any", "values": "Paris"}, "'checks[0].values'"),
    ({"kind": "contains_any", "values": []}, "'checks[0].values'"),
    ({"kind": "max_words", "n": "10"}, "'checks[0].n'"),
    ({"kind": "sentences", "n": 0}, "'checks[0].n'"),
    ({"kind": "items", "n": True}, "'checks[0].n'"),
    ({"kind": "number"}, "'checks[0].value' is missing"),
    ({"kind": "number", "value": "56"}, "'checks[0].value'"),
    ({"kind": "yes_no", "value": "maybe"}, "'checks[0].value'"),
    ({"kind": "regex", "pattern": "(unclosed"}, "'checks[0].pattern'"),
    ("contains_any", "'checks[0]'"),
])
def test_validate_checks_names_item_and_field(check, needle):
    with pytest.raises(CaiError) as exc:
        validate_checks([check], "items.jsonl:3 (id qa-0003)")
    msg = str(exc.value)
    assert needle in msg and "qa-0003" in msg and "\n" not in msg


def test_validate_checks_accepts_every_kind():
    validate_checks([
        {"kind": "contains_any", "values": ["a"]}, {"kind": "contains_all", "values": ["a", "b"]},
        {"kind": "excludes", "values": ["c"]}, {"kind": "max_words", "n": 0}, {"kind": "min_words", "n": 3},
        {"kind": "sentences", "n": 1}, {"kind": "items", "n": 3}, {"kind": "number", "value": -2.5},
        {"kind": "yes_no", "value": "No"}, {"kind": "regex", "pattern": r"\d+"},
    ], "x")
    with pytest.raises(CaiError):
        validate_checks({"kind": "regex"}, "x")


def test_check_passes_validates_the_check():
    with pytest.raises(CaiError):
        check_passes({"kind": "number", "value": None}, "5")


# ----------------------------------------------------------------------------- summarize

def _scored():
    rows = [
        rec("Paris.", [PARIS], id="a", type="qa", format="raw"),                 # strict, loose, form
        rec("Lyon.", [PARIS], id="b", type="qa", format="qa"),                   # form only
        rec("Paris.\n\nmore", [PARIS], id="c", type="completion", format="raw",
            finish_reason="length"),                                             # loose only
        rec("", [PARIS], id="d", type="completion", format="qa"),                 # nothing
    ]
    return score_records(rows)


def test_summarize_rates_overall_and_by_keys():
    s = summarize(_scored(), by=("type", "format"))
    assert s["n"] == 4
    assert s["strict"] == 0.25 and s["loose"] == 0.5 and s["form"] == 0.5
    assert s["passed"] == {"strict": 1, "loose": 2, "form": 2}
    assert s["by_type"]["qa"] == {"n": 2, "strict": 0.5, "loose": 0.5, "form": 1.0,
                                  "passed": {"strict": 1, "loose": 1, "form": 2}}
    assert s["by_type"]["completion"]["strict"] == 0.0 and s["by_type"]["completion"]["loose"] == 0.5
    assert s["by_format"]["raw"]["strict"] == 0.5 and s["by_format"]["qa"]["form"] == 0.5
    assert s["failures"] == {"contains_any": 2, "empty": 1, "finish_reason=length": 1}
    assert s["loose_failures"] == {"contains_any": 2, "empty": 1}


def test_summarize_edge_cases():
    s = summarize([], by="type")
    assert s["n"] == 0 and s["strict"] is None and s["by_type"] == {}
    with pytest.raises(CaiError, match="score the records first"):
        summarize([rec("Paris.")])
    one = score_records([{k: v for k, v in rec("Paris.", [PARIS]).items() if k != "type"}])
    assert summarize(one)["by_type"]["(missing)"]["n"] == 1


# ----------------------------------------------------------------------------- files and `cai score`

def _write(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cai_score_writes_scored_records_and_prints_summary(tmp_path, capsys):
    src = _write(tmp_path / "responses.jsonl", [
        rec("Paris.", [PARIS], id="a"), rec("Lyon.", [PARIS], id="b"),
        rec("Paris.\nQ: next question", [PARIS], id="c", type="completion"),
    ])
    out = tmp_path / "out" / "scored.jsonl"
    assert cai_main(["score", str(src), "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["strict"] == pytest.approx(1 / 3)
    assert summary["by_type"]["completion"]["loose"] == 1.0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert [(r["strict"], r["loose"], r["form"]) for r in rows] == [
        (True, True, True), (False, False, True), (False, True, False)]
    assert rows[2]["failures"] == ["continuation"] and rows[1]["loose_failures"] == ["contains_any"]


def test_score_file_groups_by_format_when_present(tmp_path):
    src = _write(tmp_path / "r.jsonl", [rec("Paris.", [PARIS], format="raw")])
    assert "by_format" in score_file(src)
    src2 = _write(tmp_path / "r2.jsonl", [rec("Paris.", [PARIS])])
    assert "by_format" not in score_file(src2, None)


def _bad_cases():
    good = json.dumps(rec("Paris.", [PARIS], id="a"))
    no_finish = {k: v for k, v in rec("Paris.", [PARIS], id="b").items() if k != "finish_reason"}
    unknown = rec("Paris.", [{"kind": "containz", "values": ["x"]}], id="c")
    return {
        "missing finish_reason": (good + "\n\n" + json.dumps(no_finish) + "\n", ":3", "finish_reason"),
        "unknown check kind": (good + "\n" + json.dumps(unknown) + "\n", ":2", "containz"),
        "malformed JSON": (good + "\n{not json\n", ":2", "not valid JSON"),
        "empty file": ("\n", "", "no response records"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_cai_score_bad_input_is_one_line_and_leaves_no_file(case, tmp_path, capsys):
    text, line, needle = _bad_cases()[case]
    src = tmp_path / "responses.jsonl"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "scored.jsonl"
    assert cai_main(["score", str(src), "-o", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and f"responses.jsonl{line}" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["responses.jsonl"]  # no temp file left


def test_cai_score_missing_file_and_folder(tmp_path, capsys):
    assert cai_main(["score", str(tmp_path / "nope.jsonl")]) != 0
    assert "file not found" in capsys.readouterr().err
    assert cai_main(["score", str(tmp_path)]) != 0
    assert "is a folder" in capsys.readouterr().err


def test_cai_score_output_path_is_a_folder(tmp_path, capsys):
    src = _write(tmp_path / "r.jsonl", [rec("Paris.", [PARIS])])
    (tmp_path / "outdir").mkdir()
    assert cai_main(["score", str(src), "-o", str(tmp_path / "outdir")]) != 0
    assert "is a folder" in capsys.readouterr().err
    assert list((tmp_path / "outdir").iterdir()) == []


def test_scoring_does_not_import_torch():
    code = ("import sys, cai_lib.scoring, cai_lib.items, cai_lib.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_module_has_no_torch_import_text():
    for module in (scoring, checks, safe_regex):
        src = Path(module.__file__).read_text()
        assert "import torch" not in src, module.__name__
