"""Instruction pools, the topic split, balanced sampling and the persistent eval set."""

import json
from collections import Counter

import pytest

from cai_lib import scoring, tasks
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.fewshot import fewshot_topics
from cai_lib.items import load_items, validate_item
from cai_lib.leakage import normalize, verify_eval_set
from cai_lib.runs import run_paths


@pytest.fixture(scope="module")
def pools():
    return tasks.train_pool(), tasks.eval_pool()


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


def test_pool_sizes_and_types(pools):
    train, evals = pools
    assert len(train) >= 1000 and len(evals) >= 300
    for pool, least in ((train, 200), (evals, 75)):
        counts = Counter(it["type"] for it in pool)
        assert set(counts) == set(tasks.TYPES)
        assert min(counts.values()) >= least, counts  # a balanced sample of 1000/300 is possible


def test_instructions_and_ids_unique(pools):
    both = pools[0] + pools[1]
    norms = [normalize(it["instruction"]) for it in both]
    assert len(set(norms)) == len(norms)  # no padding by duplication, not even up to case/punctuation
    assert len({it["id"] for it in both}) == len(both)


def test_every_item_validates_and_has_a_passing_answer(pools):
    for it in pools[0] + pools[1]:
        validate_item(it, f"pool item {it['id']}")
        rec = dict(it, response=reference_answer(it), finish_reason="eos")
        scored = scoring.score_record(rec)
        assert scored["strict"], (it["instruction"], rec["response"], scored["failures"])


def test_checks_reject_wrong_answers():
    items = {it["instruction"]: it for it in tasks.train_pool() + tasks.eval_pool()}
    capital = next(it for ins, it in items.items() if "capital of France" in ins)
    assert not scoring.check_passes(capital["checks"][0], "The capital of France is Lyon.")
    assert scoring.check_passes(capital["checks"][0], "It is Paris.")
    arith = next(it for it in items.values() if it["source"] == "arithmetic" and it["checks"][0]["kind"] == "number")
    wrong = arith["checks"][0]["value"] + 1
    assert not scoring.check_passes(arith["checks"][0], f"The answer is {wrong}.")


def test_split_is_by_topic_and_deterministic(pools):
    train, evals = pools
    t_topics = {it["topic"] for it in train}
    e_topics = {it["topic"] for it in evals}
    assert not t_topics & e_topics
    assert not {it["topic_group"] for it in train} & {it["topic_group"] for it in evals}
    assert not fewshot_topics() & e_topics  # few-shot topics are never eval topics
    # Every phrasing of one fact lands on one side (France: qa, completion, response...).
    france = [it for it in train + evals if it["topic"] == "capital:france"]
    assert len(france) >= 3 and len({it["id"][len(it["type"]) + 1] for it in france}) == 1
    tasks._pools.cache_clear()
    assert tasks.train_pool() == train and tasks.eval_pool() == evals


def test_sample_items_balanced_seeded(pools):
    train = pools[0]
    a = tasks.sample_items(train, 160, seed=0)
    assert Counter(it["type"] for it in a) == {t: 40 for t in tasks.TYPES}
    assert len({it["id"] for it in a}) == 160
    assert a == tasks.sample_items(train, 160, seed=0)
    assert a != tasks.sample_items(train, 160, seed=1)
    odd = tasks.sample_items(train, 7, seed=0)
    assert sorted(Counter(it["type"] for it in odd).values()) == [1, 2, 2, 2]
    # A type with too few items hands its share to the others.
    small = [it for it in train if it["type"] != "qa"] + [it for it in train if it["type"] == "qa"][:5]
    got = Counter(it["type"] for it in tasks.sample_items(small, 100, seed=0))
    assert got["qa"] == 5 and sum(got.values()) == 100
    assert tasks.sample_items(train, 0, seed=0) == train
    # Within a type the sample cycles through fact tables rather than mirroring the largest.
    spread = Counter(it["source"] for it in tasks.sample_items(pools[1], 120, seed=0))
    assert len(spread) >= 10 and max(spread.values()) <= 20, spread


def test_duplicate_fact_is_a_one_line_error(monkeypatch):
    from cai_lib import facts
    monkeypatch.setattr(facts, "CAPITALS", facts.CAPITALS + [facts.CAPITALS[0]])
    with pytest.raises(CaiError, match="duplicate instruction .* fix the fact table"):
        tasks.build_all()


def test_sample_items_over_ask_is_one_line_error(pools):
    train = pools[0]
    with pytest.raises(CaiError) as exc:
        tasks.sample_items(train, len(train) + 1, seed=0)
    msg = str(exc.value)
    assert str(len(train) + 1) in msg and str(len(train)) in msg and "\n" not in msg


def test_write_split_persistent_eval_and_report(tmp_path):
    rp = run_paths(tmp_path / "run")
    cfg = RunConfig(n_train_items=80, n_eval_items=40, seed=3)
    train, evals, report = tasks.write_split(rp, cfg)
    assert len(train) == 80 and len(evals) == 40 and report["clean"] and report["flagged"] == [] and report["n_flagged"] == 0
    assert report["counts"]["fewshot"] >= 32 and report["thresholds"]["near_containment"] == 0.8
    assert load_items(rp.train_instructions) == train and load_items(rp.eval_instructions) == evals
    verify_eval_set(rp)
    eval_bytes = rp.eval_instructions.read_bytes()
    # A second run of stage 01 with another seed and size: the eval set is kept byte-identical.
    train2, evals2, report2 = tasks.write_split(rp, RunConfig(n_train_items=120, n_eval_items=60, seed=9))
    assert rp.eval_instructions.read_bytes() == eval_bytes and evals2 == evals
    assert len(train2) == 120 and report2["eval_kept_from_previous_run"]
    assert report2["train_sha256"] != report["train_sha256"] and report2["eval_sha256"] == report["eval_sha256"]
    verify_eval_set(rp)


def test_write_split_refuses_a_leaking_eval_file(tmp_path):
    rp = run_paths(tmp_path / "run")
    cfg = RunConfig(n_train_items=40, n_eval_items=20, seed=0)
    train = tasks.sample_items(tasks.train_pool(), cfg.n_train_items, cfg.seed)
    leaky = dict(train[0], id="qa-leak", instruction=train[0]["instruction"].upper())
    rp.data.mkdir(parents=True)
    rp.eval_instructions.write_text(json.dumps(leaky) + "\n")
    before = rp.eval_instructions.read_bytes()
    with pytest.raises(CaiError) as exc:
        tasks.write_split(rp, cfg)
    assert exc.value.exit_code == 2 and "qa-leak" in str(exc.value)
    assert not rp.train_instructions.exists() and not rp.overlap_report.exists()  # nothing half-written
    assert rp.eval_instructions.read_bytes() == before


def test_write_split_rejects_malformed_existing_eval_file(tmp_path):
    rp = run_paths(tmp_path / "run")
    rp.data.mkdir(parents=True)
    rp.eval_instructions.write_text('{"id": "x", "type": "qa", "instruction": "Hi?"}\n')  # no checks
    with pytest.raises(CaiError) as exc:
        tasks.write_split(rp, RunConfig(n_train_items=8, n_eval_items=4))
    assert "checks" in str(exc.value) and exc.value.exit_code == 1
    assert not rp.train_instructions.exists()
