"""Stage 03 on a tiny model: one copy of the base weights (adapter toggled), identical
prompts for both models, and refusal of an eval set that is missing, changed or leaking."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from cai_lib import evaluate
from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.generate import generate
from cai_lib.jsonl import write_json, write_jsonl
from cai_lib.split import check_files
from cai_lib.runs import run_paths

ITEMS = [
    {"id": "qa-1", "type": "qa", "instruction": "Answer this question: What is the capital of Peru?",
     "checks": [{"kind": "contains_any", "values": ["Lima"]}]},
    {"id": "qa-2", "type": "qa", "instruction": "Q: How many legs does a spider have?",
     "checks": [{"kind": "number", "value": 8}]},
    {"id": "re-1", "type": "response", "instruction": "Respond with yes or no: Is ice cold?",
     "checks": [{"kind": "yes_no", "value": "yes"}]},
]
TRAIN = [{"id": "t-1", "type": "qa", "instruction": "Answer this question: What is the capital of Chile?",
          "checks": [{"kind": "contains_any", "values": ["Santiago"]}]}]


def _stage01(tmp_path, eval_items=ITEMS, train_items=TRAIN):
    paths = run_paths(tmp_path / "run")
    write_jsonl(paths.train_instructions, train_items)
    write_jsonl(paths.eval_instructions, eval_items)
    _, report = check_files(paths.train_instructions, paths.eval_instructions)
    write_json(paths.overlap_report, report)
    return paths


def test_refuses_without_train_file(tmp_path):
    paths = _stage01(tmp_path)
    paths.train_instructions.unlink()
    with pytest.raises(CaiError, match="run stage 01"):
        evaluate.run_evaluation(RunConfig(), paths)


def test_refuses_eval_set_changed_after_the_check(tmp_path):
    paths = _stage01(tmp_path)
    write_jsonl(paths.eval_instructions, ITEMS[:2])
    with pytest.raises(CaiError, match="does not match"):
        evaluate.run_evaluation(RunConfig(), paths)


def test_refuses_leaking_eval_set(tmp_path):
    leaking = ITEMS + [{**TRAIN[0], "id": "qa-9",
                        "instruction": "Answer this question: What is the capital city of Chile?"}]
    paths = _stage01(tmp_path, eval_items=leaking)
    with pytest.raises(CaiError, match="leaks") as exc:
        evaluate.run_evaluation(RunConfig(), paths)
    assert exc.value.exit_code == 2
    assert not paths.eval_base.exists()


def test_adapter_toggle_gives_fresh_base_outputs_and_same_prompts(tiny_tok):
    from tiny import tiny_model
    fresh = tiny_model(tiny_tok, seed=0)
    policy = get_peft_model(tiny_model(tiny_tok, seed=0),
                            LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    torch.manual_seed(1)
    cfg = RunConfig(eval_max_new_tokens=6, gen_batch_size=2)
    base, trained, timing = evaluate.generate_both(policy, tiny_tok, ITEMS, cfg, progress=False)
    reference = generate(fresh, tiny_tok, [it["instruction"] for it in ITEMS], max_new_tokens=6, batch_size=2,
                         progress=False)
    assert [r["response"] for r in base] == [r["response"] for r in reference]
    assert [r["instruction"] for r in base] == [r["instruction"] for r in trained]
    assert [r["response"] for r in base] != [r["response"] for r in trained]  # the adapter is on for "trained"
    assert all({"strict", "loose", "form", "failures"} <= set(r) for r in base + trained)
    assert timing["base_new_tokens"] > 0


def test_refuses_an_adapter_trained_on_another_base(tmp_path):
    """Stage 03 must not evaluate base B with an adapter trained on base A."""
    import json

    from tiny import save_tiny
    from transformers import AutoModelForCausalLM

    from cai_lib import adapters
    from cai_lib.models import load_base

    a, b = save_tiny(tmp_path / "a", seed=0), save_tiny(tmp_path / "b", seed=1)
    paths = _stage01(tmp_path)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(a),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    peft.save_pretrained(paths.adapter)
    ident_a = adapters.base_identity(load_base(str(a)))
    (paths.adapter / adapters.ADAPTER_META).write_text(json.dumps({"base_identity": ident_a}))
    with pytest.raises(CaiError, match="different base model"):
        evaluate.load_models(RunConfig(model=str(b)), paths)
    loaded, model = evaluate.load_models(RunConfig(model=str(a)), paths)  # its own base is accepted
    assert loaded.resolved_path == a



# ---- the in-context arm (issue 12) -------------------------------------------------------------

def _policy(tiny_tok):
    from tiny import tiny_model
    return get_peft_model(tiny_model(tiny_tok, seed=0),
                          LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))


def test_three_arms_pair_the_same_items_in_the_same_order(tiny_tok):
    from tiny import tiny_model

    from cai_lib import arms, prompts
    fresh = tiny_model(tiny_tok, seed=0)
    policy = _policy(tiny_tok)
    cfg = RunConfig(eval_max_new_tokens=6, gen_batch_size=2, n_fewshot=2)
    base, fewshot, trained, timing = evaluate.generate_three(policy, tiny_tok, ITEMS, cfg, progress=False)
    assert [r["id"] for r in base] == [r["id"] for r in fewshot] == [r["id"] for r in trained] == \
        [it["id"] for it in ITEMS]
    assert [r["instruction"] for r in fewshot] == [it["instruction"] for it in ITEMS]  # raw instruction kept
    assert all(r["model"] == "base_fewshot" and r["format"] == "few_shot" and len(r["fewshot_ids"]) == 2
               for r in fewshot)
    assert all({"strict", "loose", "form", "failures"} <= set(r) for r in fewshot)
    # the few-shot arm is the *base* model (adapter off) on the data stage's frame, greedy, with its stops
    requests = arms.fewshot_requests(ITEMS, cfg)
    assert all(p.endswith(f"Instruction: {it['instruction']}\nResponse:") for (p, _), it in zip(requests, ITEMS))
    ref = generate(fresh, tiny_tok, [p for p, _ in requests], max_new_tokens=6, batch_size=2, progress=False,
                   stop=prompts.stop_strings("response"))
    assert [r["response"] for r in fewshot] == [r["response"].strip() for r in ref]
    assert timing["base_fewshot_new_tokens"] > 0
    # rotation is seeded per item: the same config gives the same examples
    assert arms.fewshot_requests(ITEMS, cfg) == requests
    arms.check_paired(base, fewshot, trained)
    with pytest.raises(CaiError, match="same items in the same order"):
        arms.check_paired(base, fewshot[::-1], trained)


def test_fewshot_arm_refuses_an_eval_item_as_an_example():
    from cai_lib import arms

    def leaky_rotate(type_, step, k, rng):  # a bank that holds another eval item's instruction
        return [{"id": "bad", "instruction": ITEMS[1]["instruction"], "answer": "8 legs."}]

    cfg = RunConfig(n_fewshot=1)
    requests = arms.fewshot_requests(ITEMS[:1], cfg, rotate_fn=leaky_rotate)
    with pytest.raises(CaiError, match="would be shown eval item 'qa-2'") as exc:
        arms.check_no_eval_examples(ITEMS, requests)
    assert exc.value.exit_code == 2


def _stage01_with_adapter(tmp_path, tiny_model_dir):
    """Stage 01's outputs plus a random LoRA adapter recorded as trained on the tiny base."""
    import json

    from transformers import AutoModelForCausalLM

    from cai_lib import adapters
    from cai_lib.models import load_base
    paths = _stage01(tmp_path)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(paths.adapter)
    (paths.adapter / adapters.ADAPTER_META).write_text(
        json.dumps({"base_identity": adapters.base_identity(load_base(str(tiny_model_dir)))}))
    return paths


def test_stage03_writes_the_fewshot_arm_and_stats_fields(tmp_path, tiny_model_dir):
    import json

    from cai_lib import arms
    from cai_lib.jsonl import read_json, read_jsonl
    paths = _stage01_with_adapter(tmp_path, tiny_model_dir)
    cfg = RunConfig(model=str(tiny_model_dir), eval_max_new_tokens=4, gen_batch_size=2, determinism_sample=0,
                    n_bootstrap=100, n_fewshot=2)
    summary, scored = evaluate.evaluate_arms(cfg, paths, progress=False)
    fs = read_jsonl(paths.eval_fewshot)
    # stage 03's entry shows what was written without reading it back: the returned records are the files
    assert scored == {"base": read_jsonl(paths.eval_base), "base_fewshot": fs, "trained": read_jsonl(paths.eval_trained)}
    assert [r["id"] for r in fs] == [r["id"] for r in read_jsonl(paths.eval_base)] == [it["id"] for it in ITEMS]
    assert summary["base_fewshot"]["n"] == 3 and "answer_skew" in summary
    assert read_json(paths.eval_summary)["fewshot_arm"]["stop_strings"] == ["\n\n", "\nInstruction:", "\nResponse:"]
    block = arms.stats_fields(paths, cfg)
    ic = block["in_context"]["strict"]
    assert ic["arms"] == {"base": "base_fewshot", "trained": "trained"} and ic["n"] == 3
    assert set(ic["by_type"]) == {"qa", "response"}
    assert block["in_context_verdict"]["outcome"] in ("beat", "matched", "lost")
    assert block["in_context_verdict"]["sentence"].startswith("Training ")
    json.dumps(block)
    kw = arms.gate_kwargs(block, cfg)
    assert kw == {"in_context": block["in_context"]["strict"], "require_in_context": False}
    frame = arms.three_arm_rates_frame(arms.load_arms(paths))
    assert list(frame[frame["type"] == "all"]["arm"]) == ["base · raw", "base · few-shot", "trained · raw"]
    assert list(arms.in_context_frame(block["in_context"])["type"]) == ["all", "qa", "response"]
    # a run made before the arm existed: stats say so instead of failing
    paths.eval_fewshot.unlink()
    assert arms.stats_fields(paths, cfg)["in_context"] is None


def test_cli_stats_and_verdict_sentence():
    from cai_lib import arms

    def recs(passes, arm):
        return [{"id": f"i{k}", "type": "qa", "instruction": f"q{k}", "strict": p, "loose": p, "form": True,
                 "response": "x", "checks": []} for k, p in enumerate(passes)]

    base = recs([0] * 40, "base")
    fewshot = recs([1] * 10 + [0] * 30, "base_fewshot")
    trained = recs([1] * 35 + [0] * 5, "trained")
    cfg = RunConfig(n_bootstrap=100)
    s = evaluate.cli_stats(base, fewshot, trained, cfg)
    assert s["in_context"]["base_rate"] == 0.25 and s["in_context"]["trained_rate"] == 0.875
    v = s["in_context_verdict"]
    assert v["outcome"] == "beat" and "Training beat in-context prompting" in v["sentence"]
    assert "0.88 vs base few-shot 0.25 on the same 40 items" in v["sentence"]
    lost = arms.verdict(arms.in_context_stats(trained, fewshot, cfg)["strict"], 0.01)
    assert lost["outcome"] == "lost" and "lost to" in lost["sentence"]
    same = arms.verdict(arms.in_context_stats(fewshot, fewshot, cfg)["strict"], 0.01)
    assert same["outcome"] == "matched" and "did not differ significantly" in same["sentence"]


def test_cai_eval_output_folder_refuses_an_earlier_fewshot_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval_base_fewshot.jsonl").write_text("")
    with pytest.raises(CaiError, match="eval_base_fewshot.jsonl"):
        evaluate.check_output_dir(out, tmp_path / "run")


def test_stage03_certificate_and_the_profiles_cache_reach_every_generation(tmp_path, tiny_model_dir, monkeypatch):
    """Issue 13: gen_cache is honoured by all three arms and the certificate; the certificate
    (batched vs batch-1 on the sample, strings and rates) is in the summary, and the verdict
    box's warning appears only when batching changed more than the limit."""
    from cai_lib import generate as gen, views
    paths = _stage01_with_adapter(tmp_path, tiny_model_dir)
    seen = []
    real = gen.generate

    def recording(*a, **kw):
        seen.append((kw.get("desc"), kw.get("cache"), kw.get("batch_size")))
        return real(*a, **kw)

    monkeypatch.setattr(gen, "generate", recording)
    cfg = RunConfig(model=str(tiny_model_dir), eval_max_new_tokens=4, gen_batch_size=2, determinism_sample=2,
                    n_bootstrap=100, n_fewshot=2, gen_cache="dynamic")
    summary = evaluate.run_evaluation(cfg, paths, progress=False)
    descs = [d for d, _, _ in seen]
    assert {"base", "trained", "base few-shot", "certificate: batched", "certificate: batch 1"} <= set(descs)
    assert all(c == "dynamic" for _, c, _ in seen), seen
    cert = summary["certificate"]
    assert cert["n"] == 2 and cert["batch_size"] == 2 and cert["cache"] == "dynamic"
    assert set(cert["batched"]) == set(cert["batch1"]) == {"strict", "loose", "form"}
    assert summary["determinism"]["agree"] == cert["identical"]  # the stage-00-style record is derived from it
    assert "comparability certificate" in views.decoding_table(summary).to_string()
    # the stage's time by part: every arm, the certificate and the load are timed
    tim = summary["timing"]
    assert {"base_seconds", "trained_seconds", "base_fewshot_seconds", "certificate_seconds", "load_seconds"} <= set(tim)
    assert all(tim[k] >= 0 for k in ("certificate_seconds", "load_seconds"))
    text = views.time_text(tim, compiled=False)
    assert "base few-shot" in text and "certificate" in text and "model load" in text and "compil" not in text
    assert "compiling" in views.time_text(tim, compiled=True)
    assert views.time_text({"base_seconds": 1, "trained_seconds": 2}).startswith("base 1 s")  # an older summary
    # the verdict-box warning: silent under the limit, one sentence with the rates over it
    assert views.certificate_warnings({**cert, "identical": 2, "flagged": False}, "stage 03") == []
    flagged = {**cert, "identical": 1, "flagged": True}
    (w,) = views.certificate_warnings(flagged, "stage 03")
    assert "differ on 1/2 sampled eval items" in w and "strict" in w
