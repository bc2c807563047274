"""Leakage guard against cheap evasions: a labelled paraphrase set (fixture) grouped by
evasion class, clean controls that share words, and non-Latin controls.

The fixture (tests/fixtures/leakage_paraphrases/cases.json):
* `leaks`: (train, eval) pairs that must be flagged, by class (possessive, plural, number
  words, zero-width, homoglyph, fullwidth, prefix, typo, answer format, ...).
* `clean`: pairs that ask different things and must not be flagged.
* `non_latin`: distinct Chinese/Russian/Arabic/Japanese/Greek/Hindi/Korean instructions;
  none may be flagged against another.
* `known_misses`: leaks the guard documents it cannot catch; pinned so the docstring
  stays true (move a case to `leaks` when the guard learns it).
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from cai_lib import canon, leakage, split, text
from cai_lib.leakage import answers_of, answers_overlap
from cai_lib.text import fold, normalize
from cai_lib.split import find_leaks

CASES = json.loads((Path(__file__).parent / "fixtures" / "leakage_paraphrases" / "cases.json").read_text("utf-8"))


def item(item_id, instruction, answers=None):
    """A list of answers is a contains_any check, a number a number check."""
    if answers is None:
        checks = [{"kind": "min_words", "n": 1}]
    elif isinstance(answers, list):
        checks = [{"kind": "contains_any", "values": answers}]
    else:
        checks = [{"kind": "number", "value": answers}]
    return {"id": item_id, "instruction": instruction, "checks": checks}


def pair_items(k, case):
    return (item(f"t{k}", case["train"], case.get("train_answers")),
            item(f"e{k}", case["eval"], case.get("eval_answers")))


def _ids(cases):
    return [f"{c['class']}-{i}" for i, c in enumerate(cases)]


def test_fixture_covers_every_evasion_class():
    classes = Counter(c["class"] for c in CASES["leaks"])
    assert len(CASES["leaks"]) >= 40
    for cls in ("possessive", "plural", "number_words", "zero_width", "homoglyph", "fullwidth", "prefix",
                "typo", "answer_format", "answer_veto_exact", "word_order", "non_latin_exact"):
        assert classes[cls] >= 2 or cls == "non_latin_exact" and classes[cls] >= 1, cls
    assert {c["lang"] for c in CASES["non_latin"]} >= {"zh", "ru", "ar", "ja"}


@pytest.mark.parametrize("k,case", list(enumerate(CASES["leaks"])), ids=_ids(CASES["leaks"]))
def test_paraphrased_leak_is_caught(k, case):
    train, ev = pair_items(k, case)
    leaks = find_leaks([train], [ev])
    assert [(x["eval_id"], x["other_id"]) for x in leaks] == [(f"e{k}", f"t{k}")], case
    if case["class"] == "answer_veto_exact":
        # Exact or near-exact: flagged although the answers disagree (never vetoed).
        assert leaks[0]["kind"] == "exact"


@pytest.mark.parametrize("k,case", list(enumerate(CASES["clean"])), ids=_ids(CASES["clean"]))
def test_clean_control_is_not_flagged(k, case):
    train, ev = pair_items(k, case)
    assert find_leaks([train], [ev]) == [], case


def test_all_cases_together_flag_exactly_the_planted_pairs():
    # One run over every leak case: no case leaks into another (the same words recur
    # across cases: capital, legs, times), and every planted pair is still found.
    pairs = [pair_items(k, c) for k, c in enumerate(CASES["leaks"])]
    train, evals = [p[0] for p in pairs], [p[1] for p in pairs]
    got = {(x["eval_id"], x["other_id"]) for x in find_leaks(train, evals)}
    assert got == {(f"e{k}", f"t{k}") for k in range(len(CASES["leaks"]))}


def test_distinct_non_latin_items_are_not_flagged_but_duplicates_are():
    items = [{"id": f"nl{i}", "instruction": c["instruction"]} for i, c in enumerate(CASES["non_latin"])]
    leaks = find_leaks(items, items)
    # Each item matches itself exactly and nothing else (the old guard normalised every
    # non-Latin instruction to "" and flagged all 25 x 25 pairs).
    assert sorted((x["eval_id"], x["other_id"], x["kind"]) for x in leaks) == sorted(
        (it["id"], it["id"], "exact") for it in items)
    assert all(normalize(it["instruction"]) for it in items)


@pytest.mark.parametrize("k,case", list(enumerate(CASES["known_misses"])), ids=_ids(CASES["known_misses"]))
def test_documented_limitations_still_hold(k, case):
    train, ev = pair_items(k, case)
    assert find_leaks([train], [ev]) == [], "the guard now catches this: move the case to 'leaks' and update the docstring"


def test_files_only_reference_still_catches_evasions():
    # Without the shipped corpus (reference=()), the hand lists and canonical forms alone
    # still catch the cheap rewrites.
    for k in (0, 8, 12, 16, 20, 23):
        train, ev = pair_items(k, CASES["leaks"][k])
        assert find_leaks([train], [ev], reference=()), CASES["leaks"][k]


def test_fold_and_normalize():
    assert normalize("Wh\u200bat is the c\u0430pital of Ｆｒａｎｃｅ？") == "what is the capital of france"
    assert normalize("WHAT IS THE САРІТАL") == "what is the capital"           # all-Cyrillic look-alike word
    assert normalize("Какая столица Франции?") == "какая столица франции"       # real Russian stays Russian
    assert normalize("Ποια είναι η πρωτεύουσα;") == "ποια ειναι η πρωτευουσα"   # Greek stays Greek
    assert normalize("中国的首都是哪里？") == "中国的首都是哪里"
    assert normalize("Chișinău's 1,000 people") == "chisinau 1000 people"
    assert normalize("Don't, can't") == "do not can not"
    assert fold("𝐏𝐚𝐫𝐢𝐬 ᴘᴀʀɪs") == "paris paris"
    assert normalize("Ke\u00adnya\ufeff") == "kenya"


def test_numbers_stems_and_canonical_sequences():
    key = lambda t: canon.analysis(t)[1]
    assert key("What is four times four?") == key("What's 4 times 4") == ("4", "tim", "4")
    assert key("What is one hundred and five minus twenty-four?") == ("105", "minus", "24")
    assert key("How many legs do horses have?") == key("How many legs does a horse have?")
    assert key("What is 4 minus 3?") != key("What is 3 minus 4?")          # order kept: not near-exact
    assert "1" not in key("Write one sentence about rain.")                  # "one" the pronoun
    assert key("What is one plus one?") == ("1", "plus", "1")
    assert text.stem("cities") == text.stem("city") and text.stem("horses") == text.stem("horse")
    assert text.stem("glass") == text.stem("glasses") and text.stem("paris") == "paris"


def test_answers_compare_normalised():
    a = lambda *vals: answers_of({"checks": [{"kind": "contains_any", "values": list(vals)}]})
    n = lambda v: answers_of({"checks": [{"kind": "number", "value": v}]})
    assert answers_overlap(a("sixteen"), n(16)) and answers_overlap(a("twenty-four"), n(24.0))
    assert answers_overlap(a("Washington, D.C."), a("Washington"))
    assert answers_overlap(a("BUCUREȘTI"), a("București")) and answers_overlap(a("kittens"), a("a kitten"))
    assert not answers_overlap(n(5), n(-5)) and not answers_overlap(a("Paris"), a("Lima"))


def test_near_exact_is_never_vetoed_but_near_is():
    # Same words, different answers: a wrongly labelled copy is still a copy.
    train = [item("t", "What is the capital of Chile?", ["Santiago"])]
    got = find_leaks(train, [item("e", "Capital of CHILE", ["Lima"])])
    assert [x["kind"] for x in got] == ["exact"]
    # A rewording with disjoint answers is vetoed (different facts look like this too).
    assert find_leaks(train, [item("e", "Chile: which city is its capital?", ["Lima"])]) == []
    assert find_leaks(train, [item("e", "Chile: which city is its capital?", ["santiago"])])


def test_template_typo_is_dropped_but_real_words_are_not_typos():
    # "captial" is "capital" mistyped (a template word): it does not count as content.
    train = [item("t", "What is the capital of Peru?")]
    assert find_leaks(train, [item("e", "What is the captial of Peru?")])
    assert find_leaks(train, [item("e", "What is the captial of Chile?")]) == []
    # Words of the shipped corpus are never typos of each other.
    model = leakage.content_model([], split.shipped_corpus())
    assert "slovakia" in model.known and "slovenia" in model.known
    assert not model.typo_match("slovakia", "slovenia") and model.typo_match("austrlia", "australia")
