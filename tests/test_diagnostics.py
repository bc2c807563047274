"""Answer-skew detectors and pair rebalancing (cai_lib.diagnostics) on constructed sets."""

import pytest

from cai_lib import diagnostics as dg
from cai_lib.errors import CaiError


def yn(i, truth):
    return {"id": f"yn-{i}", "type": "response", "instruction": f"Respond with yes or no: question {i}?",
            "checks": [{"kind": "yes_no", "value": truth}]}


def num(i, value):
    return {"id": f"n-{i}", "type": "qa", "instruction": f"What is {i}?", "checks": [{"kind": "number", "value": value}]}


YN_ITEMS = [yn(i, "yes" if i % 2 == 0 else "no") for i in range(20)]  # true yes share 0.5


def test_planted_yes_bias_is_flagged():
    recs = [{**it, "response": "Yes, it is."} for it in YN_ITEMS]
    s = dg.answer_skew(recs, threshold=0.10)
    row = s["by_kind"]["yes_no"]
    assert row["yes_share"] == 1.0 and row["true_yes_share"] == 0.5
    assert row["accuracy"] == 0.5
    assert row["skew"] == 0.5 and row["skew_class"] == "yes"
    assert row["flagged"] and s["flagged"] and s["flagged_kinds"] == ["yes_no"]


def test_balanced_answers_are_not_flagged_even_with_some_errors():
    # one error each way: the shares stay at the truth, accuracy drops
    recs = []
    for k, it in enumerate(YN_ITEMS):
        truth = it["checks"][0]["value"]
        wrong = k in (0, 1)
        ans = ({"yes": "No.", "no": "Yes."} if wrong else {"yes": "Yes.", "no": "No."})[truth]
        recs.append({**it, "response": ans})
    s = dg.answer_skew(recs, threshold=0.10)
    row = s["by_kind"]["yes_no"]
    assert row["yes_share"] == 0.5 and row["accuracy"] == 0.9
    assert row["skew"] == 0.0 and not row["flagged"] and not s["flagged"]


def test_small_excess_below_threshold_and_missing_answers():
    # 12 yes answered on 10 true-yes: excess 0.1, not above a 0.10 threshold
    recs = [{**it, "response": "Yes."} for it in YN_ITEMS[:12]] + [{**it, "response": "No."} for it in YN_ITEMS[12:]]
    assert not dg.answer_skew(recs, threshold=0.10)["flagged"]
    assert dg.answer_skew(recs, threshold=0.05)["flagged"]
    # a response holding no yes/no at all is its own class, never counted as skew
    recs = [{**it, "response": "Maybe."} for it in YN_ITEMS]
    row = dg.answer_skew(recs)["by_kind"]["yes_no"]
    assert row["answered_shares"] == {dg.NONE: 1.0} and row["skew"] == 0.0 and not row["flagged"]


def test_number_answers_one_value_for_everything_is_flagged_distinct_values_are_not():
    items = [num(i, i + 1) for i in range(10)]
    right = [{**it, "response": f"It is {it['checks'][0]['value']}."} for it in items]
    assert not dg.answer_skew(right)["flagged"]
    stuck = [{**it, "response": "It is 8."} for it in items]
    row = dg.answer_skew(stuck)["by_kind"]["number"]
    assert row["skew_class"] == "8" and row["skew"] == pytest.approx(0.9) and row["flagged"]


def test_selection_skew_flags_a_filter_that_kept_only_yes_items():
    kept = [it for it in YN_ITEMS if it["checks"][0]["value"] == "yes"]
    s = dg.selection_skew(kept, YN_ITEMS)
    assert s["by_kind"]["yes_no"]["kept_shares"] == {"yes": 1.0} and s["flagged"]
    assert not dg.selection_skew(YN_ITEMS, YN_ITEMS)["flagged"]


def _pairs_for(items):
    return [{"item_id": it["id"], "chosen": it["checks"][0]["value"].capitalize() + ".", "rejected": "x"}
            for it in items]


def test_rebalance_caps_the_dominant_class_to_its_pool_share_plus_tolerance():
    yes_items = [it for it in YN_ITEMS if it["checks"][0]["value"] == "yes"]  # 10
    no_items = [it for it in YN_ITEMS if it["checks"][0]["value"] == "no"][:3]
    other = [{"id": "free-1", "type": "generation", "instruction": "Write.", "checks": []}]
    pool = YN_ITEMS + other
    pairs = _pairs_for(yes_items + no_items) + [{"item_id": "free-1", "chosen": "A line.", "rejected": "x"}]
    kept, dropped = dg.rebalance_pairs(pairs, pool, tolerance=0.05, seed=0)
    ks = [p for p in kept if p["item_id"].startswith("yn")]
    n_yes = sum(p["chosen"] == "Yes." for p in ks)
    assert sum(p["chosen"] == "No." for p in ks) == 3  # the minority class is never dropped
    assert n_yes / len(ks) <= 0.55 + 1e-9  # 3 no -> at most 3 yes (3/6 = 0.5; 4/7 = 0.57 > 0.55)
    assert n_yes == 3 and len(dropped) == 7
    assert any(p["item_id"] == "free-1" for p in kept)  # items with no answer class are untouched
    assert [p for p in pairs if p in kept] == kept  # original order kept
    again, _ = dg.rebalance_pairs(pairs, pool, tolerance=0.05, seed=0)
    assert again == kept  # seeded
    assert not dg.selection_skew([next(i for i in pool if i["id"] == p["item_id"]) for p in kept], pool)["flagged"]


def test_rebalance_leaves_a_balanced_set_alone():
    pairs = _pairs_for(YN_ITEMS)
    kept, dropped = dg.rebalance_pairs(pairs, YN_ITEMS, tolerance=0.05)
    assert kept == pairs and dropped == []


def test_pair_skew_reports_chosen_rejected_and_selection():
    yes_items = [it for it in YN_ITEMS if it["checks"][0]["value"] == "yes"]
    pairs = [{"item_id": it["id"], "chosen": "Yes.", "rejected": "No, and then more words."} for it in yes_items]
    s = dg.pair_skew(pairs, YN_ITEMS)
    assert s["flagged"] and s["chosen_vs_pool"]["flagged"]
    assert not s["chosen_answers"]["flagged"]  # chosen is right for its own items
    assert s["chosen_text"]["first_words"]["top"] == {"yes": 1.0}
    assert s["rejected_text"]["length_words"]["median"] == 5
    with pytest.raises(CaiError, match="not in the train set"):
        dg.pair_skew([{"item_id": "nope", "chosen": "a", "rejected": "b"}], YN_ITEMS)


def test_eval_skew_and_frame():
    trained = [{**it, "response": "Yes."} for it in YN_ITEMS]
    fewshot = [{**it, "response": it["checks"][0]["value"]} for it in YN_ITEMS]
    s = dg.eval_skew({"base_fewshot": fewshot, "trained": trained})
    assert s["flagged_arms"] == ["trained"]
    df = dg.skew_frame(s)
    assert list(df["source"]) == ["base_fewshot", "trained"] and list(df["flagged"]) == [False, True]


def test_bad_threshold_is_one_line():
    with pytest.raises(CaiError, match="skew_threshold"):
        dg.answer_skew([], threshold=0)


def test_pair_frames_from_pair_stats():
    stats = {"pair_types": {"wrong_sample": {"n": 4, "share_chosen_shorter": 0.25, "length_ratio": {"median": 1.0},
                                             "share_length_matched": 0.75, "pair_correct": 1.0}},
             "by_strategy": {"self_consistency": {"n_pairs": 4, "n_items": 6, "items_with_pair": 3,
                                                  "keep_rate_items": 0.5, "pair_correct": 1.0}}}
    pt = dg.pair_type_frame(stats)
    assert pt.iloc[0]["pair_type"] == "wrong_sample" and pt.iloc[0]["share_length_matched"] == 0.75
    assert dg.strategy_frame(stats).iloc[0]["keep_rate_items"] == 0.5
