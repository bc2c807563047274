"""Gate verdicts on constructed cases, using real paired statistics."""

import pytest

from cai_lib.errors import CaiError
from cai_lib.gate import gate_verdict
from cai_lib.stats import paired_stats


def st(both, b, c, neither, field="strict"):
    base = [1] * both + [1] * b + [0] * c + [0] * neither
    trained = [1] * both + [0] * b + [1] * c + [0] * neither
    s = paired_stats(base, trained, n_bootstrap=50)
    s["field"] = field
    return s


OK = dict(leakage_clean=True, guard_held=True)


def test_pass_when_every_condition_holds():
    s = st(20, 0, 77, 3)  # base 0.20, trained 0.97, p tiny
    g = gate_verdict(s, target=0.95, alpha=0.01, **OK)
    assert g["verdict"] == "PASS"
    assert g["reasons"] == []
    assert all(c["met"] for c in g["conditions"].values())
    assert g["conditions"]["trained_at_target"]["value"] == pytest.approx(0.97)


def test_trained_exactly_at_target_passes():
    s = st(10, 0, 85, 5)  # trained 0.95 exactly
    assert gate_verdict(s, target=0.95, **OK)["verdict"] == "PASS"


def test_fail_below_target_lists_only_that():
    s = st(20, 0, 70, 10)  # trained 0.90
    g = gate_verdict(s, target=0.95, **OK)
    assert g["verdict"] == "FAIL"
    assert len(g["reasons"]) == 1 and "below the target" in g["reasons"][0]
    assert not g["conditions"]["trained_at_target"]["met"]


def test_fail_not_significant():
    s = st(90, 1, 6, 3)  # base 0.91, trained 0.96, b=1 c=6: p = 0.125
    assert s["base_rate"] == pytest.approx(0.91) and s["mcnemar_p"] > 0.01
    g = gate_verdict(s, target=0.95, **OK)
    assert g["verdict"] == "FAIL"
    assert g["conditions"]["trained_at_target"]["met"]
    assert not g["conditions"]["significant_lift"]["met"]
    assert any("McNemar" in r for r in g["reasons"])


def test_significant_drop_does_not_count_as_lift():
    s = st(10, 40, 0, 50)  # trained far below base, p tiny
    assert s["mcnemar_p"] < 0.01
    g = gate_verdict(s, target=0.4, **OK)
    assert g["verdict"] == "NO_GAP"  # base 0.50 >= 0.40 already
    g = gate_verdict(s, target=0.6, **OK)
    assert g["verdict"] == "FAIL"
    assert not g["conditions"]["significant_lift"]["met"]
    assert any("not above base" in r for r in g["reasons"])


def test_leakage_and_guard_each_fail_an_otherwise_passing_run():
    s = st(20, 0, 77, 3)
    g = gate_verdict(s, leakage_clean=False, guard_held=True)
    assert g["verdict"] == "FAIL" and len(g["reasons"]) == 1 and "leak" in g["reasons"][0]
    g = gate_verdict(s, leakage_clean=True, guard_held=False)
    assert g["verdict"] == "FAIL" and len(g["reasons"]) == 1 and "guard" in g["reasons"][0]
    g = gate_verdict(s, leakage_clean=False, guard_held=False)
    assert g["verdict"] == "FAIL" and len(g["reasons"]) == 2


def test_every_unmet_condition_is_listed():
    s = st(30, 5, 6, 59)  # trained 0.36, not significant
    g = gate_verdict(s, leakage_clean=False, guard_held=False)
    assert g["verdict"] == "FAIL"
    unmet = {k for k, c in g["conditions"].items() if not c["met"]}
    assert unmet == {"trained_at_target", "significant_lift", "no_leakage", "guard_held"}
    assert len(g["reasons"]) == 4


def test_no_gap_when_base_already_at_target_even_with_other_failures():
    s = st(96, 0, 2, 2)  # base 0.96, trained 0.98, not significant
    g = gate_verdict(s, target=0.95, **OK)
    assert g["verdict"] == "NO_GAP"
    assert any("nothing to teach" in r for r in g["reasons"])
    g = gate_verdict(s, target=0.95, leakage_clean=False, guard_held=True)
    assert g["verdict"] == "NO_GAP"
    assert any("leak" in r for r in g["reasons"])  # a leak is still reported


def test_bad_stats_or_parameters():
    s = st(20, 0, 77, 3)
    with pytest.raises(CaiError, match="loose"):
        gate_verdict(s, field="loose", **OK)
    with pytest.raises(CaiError, match="lacks"):
        gate_verdict({"n": 3}, **OK)
    with pytest.raises(CaiError):
        gate_verdict(s, target=1.5, **OK)
    with pytest.raises(CaiError):
        gate_verdict(s, leakage_clean="yes", guard_held=True)


def test_gate_is_json_ready():
    import json
    g = gate_verdict(st(20, 0, 77, 3), **OK)
    assert json.loads(json.dumps(g)) == g


def test_guard_condition_reads_real_evidence_from_stage_03(tmp_path):
    """Missing evidence (stage 03 never ran) or a chat template on the evaluated tokenizer
    fails the condition; only recorded, clean evidence holds it."""
    from cai_lib import manifest
    from cai_lib.gate import guard_held
    assert guard_held(tmp_path) is False  # nothing recorded
    manifest.update_stage(tmp_path, "00", guard={"chat_template_now": False, "chat_markers_checked": ["<|im_start|>"]})
    assert guard_held(tmp_path) is False  # stage 00's evidence is about another load
    manifest.update_stage(tmp_path, "03", guard={"chat_template_now": True, "chat_markers_checked": ["<|im_start|>"]})
    assert guard_held(tmp_path) is False
    manifest.update_stage(tmp_path, "03", guard={"chat_template_now": False, "chat_markers_checked": ["<|im_start|>"]})
    assert guard_held(tmp_path) is True


# ---- beats_in_context: reported always, required only when asked (issue 12) --------------------

def ic(both, b, c, neither, field="strict"):
    """Trained-raw vs base-few-shot stats, shaped as arms.in_context_stats gives them."""
    return st(both, b, c, neither, field)


def test_in_context_is_reported_but_not_required_by_default():
    s = st(20, 0, 77, 3)  # passes every required condition
    lose = ic(80, 10, 7, 3)  # few-shot 0.90 vs trained 0.87: training does not beat prompting
    g = gate_verdict(s, **OK, in_context=lose)
    assert g["verdict"] == "PASS" and g["reasons"] == []
    cond = g["conditions"]["beats_in_context"]
    assert cond["met"] is False and cond["required_for_pass"] is False
    assert cond["value"]["fewshot_rate"] == pytest.approx(0.90)
    assert len(g["notes"]) == 1 and "does not beat the base model's few-shot prompt" in g["notes"][0]


def test_in_context_required_fails_a_run_that_does_not_beat_prompting():
    s = st(20, 0, 77, 3)
    g = gate_verdict(s, **OK, in_context=ic(80, 10, 7, 3), require_in_context=True)
    assert g["verdict"] == "FAIL" and len(g["reasons"]) == 1 and "few-shot" in g["reasons"][0]
    not_sig = ic(80, 3, 7, 10)  # trained above few-shot, p = 0.34
    g = gate_verdict(s, **OK, in_context=not_sig, require_in_context=True)
    assert g["verdict"] == "FAIL" and "is not below" in g["reasons"][0]
    beat = ic(20, 0, 60, 20)  # few-shot 0.20, trained 0.80
    g = gate_verdict(s, **OK, in_context=beat, require_in_context=True)
    assert g["verdict"] == "PASS" and g["conditions"]["beats_in_context"]["met"] is True
    # required but never measured: fails with a reason naming the fix
    g = gate_verdict(s, **OK, require_in_context=True)
    assert g["verdict"] == "FAIL" and "rerun stage 03" in g["reasons"][0]
    # not required and not measured: not listed at all (older runs keep their gate)
    assert "beats_in_context" not in gate_verdict(s, **OK)["conditions"]


def test_in_context_bad_input_is_one_line():
    s = st(20, 0, 77, 3)
    with pytest.raises(CaiError, match="in_context must be"):
        gate_verdict(s, **OK, in_context={"n": 3})
    with pytest.raises(CaiError, match="computed on 'loose'"):
        gate_verdict(s, **OK, in_context=ic(20, 0, 60, 20, field="loose"))
    with pytest.raises(CaiError, match="require_in_context"):
        gate_verdict(s, **OK, in_context=None, require_in_context="false")
