"""The topic split, its pools, balanced sampling and the persistent eval set."""

import json
from collections import Counter

import pytest

from cai_lib import split, tasks
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.fewshot import fewshot_topics
from cai_lib.items import load_items, sample_items
from cai_lib.text import normalize
from cai_lib.runs import run_paths
from cai_lib.split import verify_eval_set


@pytest.fixture(scope="module")
def pools():
    return split.train_pool(), split.eval_pool()


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
    split._pools.cache_clear()
    assert split.train_pool() == train and split.eval_pool() == evals


def test_sample_items_balanced_seeded(pools):
    train = pools[0]
    a = sample_items(train, 160, seed=0)
    assert Counter(it["type"] for it in a) == {t: 40 for t in tasks.TYPES}
    assert len({it["id"] for it in a}) == 160
    assert a == sample_items(train, 160, seed=0)
    assert a != sample_items(train, 160, seed=1)
    odd = sample_items(train, 7, seed=0)
    assert sorted(Counter(it["type"] for it in odd).values()) == [1, 2, 2, 2]
    # A type with too few items hands its share to the others.
    small = [it for it in train if it["type"] != "qa"] + [it for it in train if it["type"] == "qa"][:5]
    got = Counter(it["type"] for it in sample_items(small, 100, seed=0))
    assert got["qa"] == 5 and sum(got.values()) == 100
    assert sample_items(train, 0, seed=0) == train
    # Within a type the sample cycles through fact tables rather than mirroring the largest.
    spread = Counter(it["source"] for it in sample_items(pools[1], 120, seed=0))
    assert len(spread) >= 10 and max(spread.values()) <= 20, spread


def test_sample_items_over_ask_is_one_line_error(pools):
    train = pools[0]
    with pytest.raises(CaiError) as exc:
        sample_items(train, len(train) + 1, seed=0)
    msg = str(exc.value)
    assert str(len(train) + 1) in msg and str(len(train)) in msg and "\n" not in msg


def test_write_split_persistent_eval_and_report(tmp_path):
    rp = run_paths(tmp_path / "run")
    cfg = RunConfig(n_train_items=80, n_eval_items=40, seed=3)
    train, evals, report = split.write_split(rp, cfg)
    assert len(train) == 80 and len(evals) == 40 and report["clean"] and report["flagged"] == [] and report["n_flagged"] == 0
    assert report["counts"]["fewshot"] >= 32 and report["thresholds"]["near_containment"] == 0.8
    assert load_items(rp.train_instructions) == train and load_items(rp.eval_instructions) == evals
    verify_eval_set(rp)
    eval_bytes = rp.eval_instructions.read_bytes()
    # A second run of stage 01 with another seed and size: the eval set is kept byte-identical.
    train2, evals2, report2 = split.write_split(rp, RunConfig(n_train_items=120, n_eval_items=60, seed=9))
    assert rp.eval_instructions.read_bytes() == eval_bytes and evals2 == evals
    assert len(train2) == 120 and report2["eval_kept_from_previous_run"]
    assert report2["train_sha256"] != report["train_sha256"] and report2["eval_sha256"] == report["eval_sha256"]
    verify_eval_set(rp)


def test_write_split_refuses_a_leaking_eval_file(tmp_path):
    rp = run_paths(tmp_path / "run")
    cfg = RunConfig(n_train_items=40, n_eval_items=20, seed=0)
    train = sample_items(split.train_pool(), cfg.n_train_items, cfg.seed)
    leaky = dict(train[0], id="qa-leak", instruction=train[0]["instruction"].upper())
    rp.data.mkdir(parents=True)
    rp.eval_instructions.write_text(json.dumps(leaky) + "\n")
    before = rp.eval_instructions.read_bytes()
    with pytest.raises(CaiError) as exc:
        split.write_split(rp, cfg)
    assert exc.value.exit_code == 2 and "qa-leak" in str(exc.value)
    assert not rp.train_instructions.exists() and not rp.overlap_report.exists()  # nothing half-written
    assert rp.eval_instructions.read_bytes() == before


def test_write_split_rejects_malformed_existing_eval_file(tmp_path):
    rp = run_paths(tmp_path / "run")
    rp.data.mkdir(parents=True)
    rp.eval_instructions.write_text('{"id": "x", "type": "qa", "instruction": "Hi?"}\n')  # no checks
    with pytest.raises(CaiError) as exc:
        split.write_split(rp, RunConfig(n_train_items=8, n_eval_items=4))
    assert "checks" in str(exc.value) and exc.value.exit_code == 1
    assert not rp.train_instructions.exists()
