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
from cai_lib.leakage import check_files
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

