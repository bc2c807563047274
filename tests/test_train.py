"""DPO training on a tiny Gemma-3-shaped model: tokenization, learning, resume, records.

Each training run is a few dozen milliseconds of compute on a ~20k-parameter model; the
file's time is mostly TRL's import and trainer construction.
Tests that build a DPO trainer are marked `slow` (seconds each): `make test-fast` skips them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from cai_lib.config import RunConfig
from cai_lib.errors import CaiError
from cai_lib.jsonl import read_json, write_jsonl
from cai_lib import checkpoints, pair_tokens, train

torch.set_num_threads(1)

ANSWERS = ["Paris.", "Four.", "Yes.", "red, green and blue."]
RAMBLE = "Q: What is two plus two?\nA: Four.\nQ: What is the capital"


@dataclass
class FakeLoaded:
    """The fields of models.Loaded that training reads."""
    model: object
    tokenizer: object
    backend: str = "transformers"
    spec: str = "tiny"
    resolved_path: str = ""
    info: dict = field(default_factory=dict)


def load_dir(path) -> FakeLoaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return FakeLoaded(model, tok, spec=f"tiny:{Path(path).name}", resolved_path=str(path))


def easy_pairs(n=8):
    """chosen: a short answer; rejected: a ramble that opens a new question."""
    return [{"prompt": f"Answer this question: What is {i} plus {i}?", "chosen": ANSWERS[i % 4],
             "rejected": RAMBLE, "strategy": "test", "item_id": f"t-{i}", "type": "qa"} for i in range(n)]


def small_cfg(**kw) -> RunConfig:
    base = dict(lora_r=8, lora_alpha=16, learning_rate=1e-2, max_steps=8, save_steps=4, per_device_batch_size=4,
                warmup_ratio=0.1, max_length=64, max_prompt_length=32, seed=0)
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture()
def run_dir(tmp_path):
    d = tmp_path / "run"
    write_jsonl(d / "data" / "preference_pairs.jsonl", easy_pairs())
    return d


def pairs_path(run_dir):
    return run_dir / "data" / "preference_pairs.jsonl"


def probe_logits(model, tok):
    ids = pair_tokens.encode_prompt(tok, "Answer this question: What is 1 plus 1?") + tok("\nFour.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_4bit_or_unsloth_on_cpu_refused_before_anything_is_written(tiny_model_dir, run_dir):
    loaded = load_dir(tiny_model_dir)
    for kw in ({"quantization": "4bit"}, {"backend": "unsloth"}):
        with pytest.raises(CaiError, match="CUDA"):
            train.train_dpo(loaded, pairs_path(run_dir), run_dir, small_cfg(**kw), progress=False)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "adapter").exists()


def test_all_linear_expands_to_projection_names(tiny_lm):
    names = train.resolve_target_modules(tiny_lm, ["all-linear"])
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(names)
    assert "lm_head" not in names
    assert train.resolve_target_modules(tiny_lm, ["q_proj"]) == ["q_proj"]


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------

class CaptureTrained:
    """Grabs the trained policy's logits at the end of training (before unloading)."""

    def __new__(cls, tok):
        from transformers import TrainerCallback

        class _Cb(TrainerCallback):
            logits = None

            def on_train_end(self, args, state, control, model=None, **kw):
                model.eval()
                _Cb.logits = probe_logits(model, tok)
                with model.disable_adapter():
                    _Cb.base_logits = probe_logits(model, tok)

        return _Cb()


@pytest.mark.slow
def test_dpo_learns_and_records(tiny_model_dir, run_dir):
    from cai_lib.adapters import adapter_disabled, check_adapter_matches, load_adapter

    loaded = load_dir(tiny_model_dir)
    base_before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    cap = CaptureTrained(loaded.tokenizer)
    summary = train.train_dpo(loaded, pairs_path(run_dir), run_dir, small_cfg(max_steps=12, save_steps=6),
                              progress=False, callbacks=[cap])

    assert summary["finished"] and summary["steps"] == 12 and summary["backend"] == "transformers"
    log = read_json(run_dir / "results" / "training_log.json")
    steps = log["steps"]
    assert [s["step"] for s in steps] == list(range(1, 13))
    for key in ("loss", "rewards_chosen", "rewards_rejected", "reward_margin", "accuracy", "learning_rate",
                "grad_norm", "tokens_seen", "wall_s", "steps_per_s", "peak_memory_bytes"):
        assert steps[-1][key] is not None, key
    losses = [s["loss"] for s in steps]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
    assert steps[-1]["reward_margin"] > 0 and steps[-1]["accuracy"] == 1.0
    # tokens seen: cumulative non-pad tokens of both sequences of every pair processed
    per_epoch = sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"])
                    for r in pair_tokens.prepare_pairs(loaded.tokenizer, easy_pairs(), small_cfg())[0])
    assert summary["tokens_seen"] == steps[-1]["tokens_seen"] == per_epoch * 6  # 12 steps of 4 = 6 epochs of 8
    assert all(b["tokens_seen"] > a["tokens_seen"] for a, b in zip(steps, steps[1:]))
    assert summary["peak_memory_bytes"] > 0

    # base weights untouched; the LoRA layers were taken out again after training
    after = loaded.model.state_dict()
    assert set(after) == set(base_before)
    assert all(torch.equal(after[k], base_before[k]) for k in base_before)

    # adapter on disk: LoRA B matrices moved away from their zero init; metadata recorded
    from safetensors.torch import load_file
    ad = run_dir / "adapter"
    weights = load_file(str(ad / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    meta = json.loads((ad / "cai_adapter.json").read_text())
    assert meta["pairs_sha256"] == summary["pairs_sha256"] and meta["training_config"]["loss_type"] == ["sigmoid", "sft"]
    check_adapter_matches(ad, loaded)

    # reload on a fresh base reproduces the trained model's logits; disabled = the base
    fresh = load_dir(tiny_model_dir)
    fresh_base_logits = probe_logits(fresh.model, fresh.tokenizer)
    peft_model = load_adapter(fresh.model, ad)
    assert torch.allclose(probe_logits(peft_model, fresh.tokenizer), cap.logits, atol=1e-5)
    assert not torch.allclose(cap.logits, fresh_base_logits, atol=1e-3)  # training changed something
    with adapter_disabled(peft_model):
        assert torch.allclose(probe_logits(peft_model, fresh.tokenizer), fresh_base_logits, atol=1e-6)
    assert torch.allclose(cap.base_logits, fresh_base_logits, atol=1e-6)
    merged = load_adapter(load_dir(tiny_model_dir).model, ad, merge=True)
    assert not hasattr(merged, "peft_config")
    assert torch.allclose(probe_logits(merged, fresh.tokenizer), cap.logits, atol=1e-4)


@pytest.mark.slow
def test_resume_after_interruption_continues_not_restarts(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise RuntimeError("simulated kill at step 5")

    cfg = small_cfg(max_steps=8, save_steps=2)
    run = tmp_path / "interrupted"
    write_jsonl(run / "data" / "preference_pairs.jsonl", easy_pairs())
    with pytest.raises(RuntimeError, match="simulated kill"):
        train.train_dpo(load_dir(tiny_model_dir), pairs_path(run), run, cfg, progress=False, callbacks=[Crash()])
    assert [p.name for p in checkpoints.complete_checkpoints(run / "checkpoints")][-1] == "checkpoint-4"
    assert not (run / "adapter").exists()

    resumed = train.train_dpo(load_dir(tiny_model_dir), pairs_path(run), run, cfg, progress=False)
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert resumed["session_start_step"] == 4 and resumed["steps"] == 8
    log = read_json(run / "results" / "training_log.json")
    assert [s["step"] for s in log["steps"]] == list(range(1, 9))  # each step once: step 5 redone, not doubled
    assert [s["session"] for s in log["steps"]] == [0] * 4 + [1] * 4
    assert log["sessions"][-1]["resumed_from"].endswith("checkpoint-4") and log["sessions"][-1]["start_step"] == 4

    # Same result as never stopping: optimizer, scheduler, data order and RNG were restored.
    straight = tmp_path / "straight"
    write_jsonl(straight / "data" / "preference_pairs.jsonl", easy_pairs())
    whole = train.train_dpo(load_dir(tiny_model_dir), pairs_path(straight), straight, cfg, progress=False)
    straight_log = read_json(straight / "results" / "training_log.json")["steps"]
    assert [round(s["loss"], 5) for s in straight_log] == [round(s["loss"], 5) for s in log["steps"]]
    assert whole["tokens_seen"] == resumed["tokens_seen"]
    from safetensors.torch import load_file
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_checkpoint_of_another_base_model_is_refused(tiny_model_dir, run_dir, tmp_path):
    from tiny import save_tiny

    train.train_dpo(load_dir(tiny_model_dir), pairs_path(run_dir), run_dir, small_cfg(max_steps=2, save_steps=2), progress=False)
    before = sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file())
    other = save_tiny(tmp_path / "other-base", seed=1)
    for resume in (True, False):
        with pytest.raises(CaiError, match="different base model"):
            train.train_dpo(load_dir(other), pairs_path(run_dir), run_dir, small_cfg(max_steps=2, save_steps=2),
                            resume=resume, progress=False)
    after = sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file())
    assert after == before  # nothing overwritten


@pytest.mark.slow
def test_changed_settings_refuse_resume_but_fresh_start_works(tiny_model_dir, run_dir):
    train.train_dpo(load_dir(tiny_model_dir), pairs_path(run_dir), run_dir, small_cfg(max_steps=2, save_steps=2), progress=False)
    with pytest.raises(CaiError, match="other settings"):
        train.train_dpo(load_dir(tiny_model_dir), pairs_path(run_dir), run_dir,
                        small_cfg(max_steps=2, save_steps=2, beta=0.5), progress=False)
    s = train.train_dpo(load_dir(tiny_model_dir), pairs_path(run_dir), run_dir,
                        small_cfg(max_steps=2, save_steps=2, beta=0.5), resume=False, progress=False)
    assert s["resumed_from"] is None and s["steps"] == 2


@pytest.mark.slow
def test_ablation_pieces_run_on_tiny_model(tiny_model_dir, run_dir):
    """benchmarks/ablation_loss.py: four adapters from one loaded base, each evaluated."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation_loss", Path(__file__).resolve().parent.parent / "benchmarks" / "ablation_loss.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    items = [{"id": f"qa-{i}", "type": "qa", "instruction": f"Answer this question: What is {i} plus {i}?",
              "checks": [{"kind": "max_words", "n": 3}]} for i in range(3)]
    loaded = load_dir(tiny_model_dir)
    base_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    cfg = small_cfg(max_steps=2, save_steps=2, eval_max_new_tokens=4, gen_batch_size=4)
    out = ab.run_ablation(loaded, run_dir, cfg, items, progress=False)
    assert [r["variant"] for r in out["rows"]] == ["base (no adapter)"] + [v[0] for v in ab.VARIANTS]
    for r in out["rows"]:
        assert r["n"] == 3 and 0 <= r["eos_rate"] <= 1 and 0 <= r["strict"] <= 1
    for name, loss_type, lead in ab.VARIANTS:
        meta = json.loads((run_dir / "ablation" / name / "adapter" / "cai_adapter.json").read_text())
        assert meta["training_config"]["loss_type"] == loss_type and meta["training_config"]["chosen_leading_space"] == lead
    assert out["winner"] in {v[0] for v in ab.VARIANTS}
    after = loaded.model.state_dict()
    assert set(after) == set(base_state) and all(torch.equal(after[k], base_state[k]) for k in base_state)
    assert "| variant |" in ab.table(out["rows"])


def _has(mod):
    import importlib.util
    return importlib.util.find_spec(mod) is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (GPU issue)")
@pytest.mark.parametrize("backend,quant", [("transformers", "none"), ("transformers", "4bit"), ("unsloth", "4bit")])
def test_gpu_backends_train_and_record(tiny_model_dir, run_dir, backend, quant):
    if quant == "4bit" and not _has("bitsandbytes"):
        pytest.skip("bitsandbytes not installed")
    if backend == "unsloth" and not _has("unsloth"):
        pytest.skip("unsloth not installed")
    from cai_lib.models import load_base

    loaded = load_base(str(tiny_model_dir), backend=backend, quantization=quant)
    s = train.train_dpo(loaded, pairs_path(run_dir), run_dir,
                        small_cfg(max_steps=4, save_steps=2, backend=backend, quantization=quant), progress=False)
    want = {"none": "transformers", "4bit": "transformers+bnb4"}[quant] if backend == "transformers" else "unsloth"
    assert s["backend"] == want and s["finished"] and s["peak_memory_kind"] == "cuda_max_memory_allocated"
    assert all(x["loss"] == x["loss"] for x in read_json(run_dir / "results" / "training_log.json")["steps"])
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert loaded.tokenizer.padding_side == "left"  # restored for generation


@pytest.mark.parametrize("ref_batch, expect", [(0, None), (64, 64)])
def test_reference_pass_batch_reaches_trl(tmp_path, ref_batch, expect):
    """ref_batch_size sets TRL's precompute_ref_batch_size (0 leaves TRL's default: the training batch)."""
    from types import SimpleNamespace
    run = SimpleNamespace(cfg=RunConfig(per_device_batch_size=8, ref_batch_size=ref_batch), backend="transformers",
                          loaded=SimpleNamespace(model=SimpleNamespace(dtype=torch.float32)),
                          paths=SimpleNamespace(checkpoints=tmp_path / "ck", root=tmp_path))
    args = train._dpo_config(run, cuda=False, progress=False)
    assert args.precompute_ref_batch_size == expect
    assert args.per_device_train_batch_size == 8
