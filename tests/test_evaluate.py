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
    base, _fewshot, trained, timing, trained_model = evaluate.generate_three(policy, tiny_tok, ITEMS, cfg,
                                                                             progress=False)
    assert trained_model is policy  # unmerged: the trained arm is the same object with the adapter on
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
    base, fewshot, trained, timing, _ = evaluate.generate_three(policy, tiny_tok, ITEMS, cfg, progress=False)
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
    # what the reports show: rate [interval] strings and readable p-values, no index column
    from cai_lib import views
    shown = views.three_arm_table(frame).data
    first = frame.iloc[0]
    assert shown.iloc[0]["strict"] == f"{first['strict']:.2f} {first['strict_ci']}"
    ic_shown = views.in_context_table(arms.in_context_frame(block["in_context"])).data
    assert list(ic_shown["type"]) == ["all", "qa", "response"] and ic_shown.iloc[0]["p (BH-adjusted)"] == "—"
    assert views.in_context_table(arms.in_context_frame(block["in_context"])).to_html().count("row_heading") == 0
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


@pytest.mark.parametrize("adapter", ["unmerged", "merged"])
def test_stage03_certificate_and_the_profiles_cache_reach_every_generation(tmp_path, tiny_model_dir, monkeypatch,
                                                                          adapter):
    """Issue 13: gen_cache is honoured by all three arms and the certificate; the certificate
    (batched vs batch-1 on the sample, strings and rates) is in the summary, and the verdict
    box's warning appears only when batching changed more than the limit."""
    from cai_lib import generate as gen, views
    paths = _stage01_with_adapter(tmp_path, tiny_model_dir)
    seen = []
    real = gen.generate

    def recording(*a, **kw):
        seen.append((kw.get("desc"), kw.get("cache"), kw.get("batch_size")))
        merged_into.append(bool(getattr(a[0], "cai_merged_adapter", None)))
        return real(*a, **kw)

    merged_into = []

    monkeypatch.setattr(gen, "generate", recording)
    cfg = RunConfig(model=str(tiny_model_dir), eval_max_new_tokens=4, gen_batch_size=2, determinism_sample=2,
                    n_bootstrap=100, n_fewshot=2, gen_cache="dynamic", eval_adapter=adapter)
    summary = evaluate.run_evaluation(cfg, paths, progress=False)
    descs = [d for d, _, _ in seen]
    assert summary["trained_weights"]["adapter"] == adapter
    assert f"{adapter} (requested)" in views.decoding_table(summary).to_string()
    # merged: the trained arm and the certificate decode the merged weights, the base arms never do
    trained_side = [d in ("trained", "certificate: batched", "certificate: batch 1") for d in descs]
    assert merged_into == [adapter == "merged" and t for t in trained_side]
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


# ---- the merged adapter (issue 13: the trained arm decodes through the base model's graph) -----

def _saved_adapter(tmp_path, tiny_tok):
    """A plain tiny base, and a folder holding a LoRA adapter with non-zero weights for it."""
    from tiny import tiny_model
    policy = get_peft_model(tiny_model(tiny_tok, seed=0),
                            LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    policy.save_pretrained(tmp_path / "adapter")
    return tiny_model(tiny_tok, seed=0), tmp_path / "adapter"


def test_merged_adapter_runs_base_arms_first_then_trained_on_the_merged_weights(tmp_path, tiny_tok):
    from tiny import tiny_model

    from cai_lib import adapters
    base_model, adapter_dir = _saved_adapter(tmp_path, tiny_tok)
    before = {k: v.clone() for k, v in base_model.state_dict().items()}
    cfg = RunConfig(eval_max_new_tokens=6, gen_batch_size=2, n_fewshot=2)
    seen = []  # the weights each arm decoded with, as a checksum of the first projection

    def spy(model, tok, prompts, **kw):
        w = next(p for n, p in model.named_parameters() if n.endswith("q_proj.weight") or "q_proj.base_layer" in n)
        seen.append((kw["desc"], float(w.detach().double().sum())))
        return generate(model, tok, prompts, **kw)

    arms = evaluate.generate_three(base_model, tiny_tok, ITEMS, cfg, progress=False, generate_fn=spy,
                                   merge_from=adapter_dir)
    assert [d for d, _ in seen] == ["base", "base few-shot", "trained"]  # base arms first
    assert seen[0][1] == seen[1][1] != seen[2][1]  # the base arms saw unmerged weights, trained the merged ones
    assert "merge_seconds" in arms.timing
    # the base arms equal a fresh base model's output; the trained arm equals PEFT's own merge
    fresh = tiny_model(tiny_tok, seed=0)
    prompts = [it["instruction"] for it in ITEMS]
    ref_base = generate(fresh, tiny_tok, prompts, max_new_tokens=6, batch_size=2, progress=False)
    assert [r["response"] for r in arms.base] == [r["response"] for r in ref_base]
    ref_merged = adapters.load_adapter(tiny_model(tiny_tok, seed=0), adapter_dir, merge=True)
    ref_trained = generate(ref_merged, tiny_tok, prompts, max_new_tokens=6, batch_size=2, progress=False)
    assert [r["response"] for r in arms.trained] == [r["response"] for r in ref_trained]
    assert [r["response"] for r in arms.trained] != [r["response"] for r in arms.base]
    # the returned model carries the merge; its weights are no longer the base weights
    assert getattr(arms.trained_model, adapters.MERGED_FLAG)
    after = arms.trained_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


def test_base_view_refuses_merged_weights(tmp_path, tiny_tok):
    from cai_lib import adapters
    base_model, adapter_dir = _saved_adapter(tmp_path, tiny_tok)
    with adapters.base_view(base_model) as m:  # a plain, never-merged model is the base
        assert m is base_model
    merged = adapters.load_adapter(base_model, adapter_dir, merge=True)
    with pytest.raises(CaiError, match="merged into these weights"):
        with adapters.base_view(merged):
            pass
    cfg = RunConfig(eval_max_new_tokens=4, gen_batch_size=2, n_fewshot=2)
    with pytest.raises(CaiError, match="merged into these weights"):  # generate_three on merged weights
        evaluate.generate_three(merged, tiny_tok, ITEMS, cfg, progress=False)


class _Dev:
    def __init__(self, kind):
        self.type = kind


class _FakeModel:
    def __init__(self, device="cuda", four_bit=False):
        self.device = _Dev(device)
        self.is_loaded_in_4bit = four_bit


@pytest.mark.parametrize("want,model,expect", [
    ("auto", _FakeModel("cuda"), "merged"),
    ("auto", _FakeModel("cuda", four_bit=True), "unmerged"),
    ("auto", _FakeModel("cpu"), "unmerged"),
    ("unmerged", _FakeModel("cuda"), "unmerged"),
    ("merged", _FakeModel("cpu"), "merged"),
])
def test_adapter_plan(want, model, expect):
    plan = evaluate.adapter_plan(RunConfig(eval_adapter=want), model)
    assert plan["adapter"] == expect and plan["why"]


def test_adapter_plan_refuses_merging_quantized_weights():
    with pytest.raises(CaiError, match="eval_adapter: merged needs unquantized"):
        evaluate.adapter_plan(RunConfig(eval_adapter="merged"), _FakeModel("cuda", four_bit=True))
