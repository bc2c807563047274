"""Instruction items built from the fact tables: every item passable, checks that reject wrong answers."""

import pytest

from cai_lib import checks, scoring, split, tasks
from cai_lib.errors import CaiError
from cai_lib.items import validate_item


@pytest.fixture(scope="module")
def pools():
    return split.train_pool(), split.eval_pool()


def reference_answer(item):
    """A correct answer built from an item's checks: proves every item can be passed."""
    checks = {c["kind"]: c for c in item["checks"]}
    if "yes_no" in checks:
        return checks["yes_no"]["value"].capitalize() + "."
    if "number" in checks:
        core = str(checks["number"]["value"])
    elif "contains_all" in checks:
        core = " and ".join(checks["contains_all"]["values"])
        if "contains_any" in checks:
            core += " or " + checks["contains_any"]["values"][0]
    else:
        core = checks["contains_any"]["values"][0]
    if "items" in checks:
        picks = checks["contains_any"]["values"][:checks["items"]["n"]]
        return ", ".join(picks[:-1]) + ", and " + picks[-1] + "."
    if "max_words" in checks and checks["max_words"]["n"] <= 2:
        return core + "."
    n = checks.get("sentences", {}).get("n", 1)
    return " ".join([f"It is {core}."] + ["That is all."] * (n - 1))


def test_every_item_validates_and_has_a_passing_answer(pools):
    for it in pools[0] + pools[1]:
        validate_item(it, f"pool item {it['id']}")
        rec = dict(it, response=reference_answer(it), finish_reason="eos")
        scored = scoring.score_record(rec)
        assert scored["strict"], (it["instruction"], rec["response"], scored["failures"])


def test_checks_reject_wrong_answers():
    items = {it["instruction"]: it for it in split.train_pool() + split.eval_pool()}
    capital = next(it for ins, it in items.items() if "capital of France" in ins)
    assert not checks.check_passes(capital["checks"][0], "The capital of France is Lyon.")
    assert checks.check_passes(capital["checks"][0], "It is Paris.")
    arith = next(it for it in items.values() if it["source"] == "arithmetic" and it["checks"][0]["kind"] == "number")
    wrong = arith["checks"][0]["value"] + 1
    assert not checks.check_passes(arith["checks"][0], f"The answer is {wrong}.")


def test_duplicate_fact_is_a_one_line_error(monkeypatch):
    from cai_lib import facts
    monkeypatch.setattr(facts, "CAPITALS", facts.CAPITALS + [facts.CAPITALS[0]])
    with pytest.raises(CaiError, match="duplicate instruction .* fix the fact table"):
        tasks.build_all()
