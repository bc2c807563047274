"""GPU-path checks. The benchmark arithmetic and the device model rebuild run on CPU; the
rest needs CUDA and skips cleanly without it (CI has no GPU; the device recipe in
scripts/device/ runs them with `bash scripts/device/bench.sh gputest`).

DPO training on CUDA (all three backends) is tested in tests/test_train.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts" / "device"))

import gpu_shapes  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _has(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


# --------------------------------------------------------------------------- CPU: benchmark arithmetic

@pytest.mark.parametrize("shape,published", [("qwen1.5b", 1.54e9), ("qwen7b", 7.62e9), ("qwen32b", 32.8e9),
                                             ("gemma270m", 0.268e9)])
def test_param_counts_match_a_model_built_from_the_config(shape, published):
    """The MFU and 32B arithmetic use param_counts(); it must equal the real model's count."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # no memory: shapes only
        model = AutoModelForCausalLM.from_config(gpu_shapes.make_config(shape))
    real = sum(p.numel() for p in model.parameters())  # tied lm_head counted once, like total_stored
    c = gpu_shapes.param_counts(shape)
    assert c["total_stored"] == real
    assert abs(real - published) / published < 0.01  # the configs are the published models'


def test_word_tokenizer_is_one_token_per_word_when_loaded_by_class(tmp_path):
    tok = gpu_shapes.word_tokenizer(1000)
    tok.save_pretrained(tmp_path)
    gpu_shapes.make_config("qwen1.5b").save_pretrained(tmp_path)  # the folder a benchmark loads
    loaded = gpu_shapes.load_tokenizer(tmp_path)
    assert loaded("w12 w13 w999")["input_ids"] == [12, 13, 999]
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (0, 1, 2)


def test_dpo_bench_pairs_are_exactly_384_tokens_with_eos():
    import bench_dpo_gpu

    tok = gpu_shapes.word_tokenizer(20010)
    for p in bench_dpo_gpu.make_pairs(3):
        for side in ("chosen", "rejected"):
            n = len(tok(p["prompt"] + p[side])["input_ids"]) + 1  # + the EOS TRL appends
            assert n == 384


def test_memory_extrapolation_arithmetic():
    """extrapolate() against a hand computation for made-up 7B measurements."""
    import bench_eval_memory as bm

    res = {"shape": "qwen7b", "params": gpu_shapes.param_counts("qwen7b"), "one_base_weights_gib": 8.0,
           "toggle_weights_gib": 8.3, "toggle": {"peak_gib": 9.3}}
    out = bm.extrapolate(res)
    p7, p32 = gpu_shapes.param_counts("qwen7b"), gpu_shapes.param_counts("qwen32b")
    bpp = (8.0 * 2**30 - 2 * 2 * 152064 * 3584) / (p7["layers_linear"] + p7["layer_bias"])
    w32 = (bpp * (p32["layers_linear"] + p32["layer_bias"]) + 2 * 2 * 152064 * 5120) / 2**30
    lora = 0.3 * (64 * 5120) / (28 * 3584)
    gen = 1.0 * (64 * 8 * 128) / (28 * 4 * 128)
    assert out["weights_gib"] == pytest.approx(w32)
    assert out["toggle_total_gib"] == pytest.approx(w32 + lora + gen)
    assert out["two_models_total_gib"] == pytest.approx(2 * w32 + lora + gen)


def test_device_rebuild_refuses_a_changed_tensor(tmp_path):
    """rebuild_embedded's per-tensor hashes tell a bit-identical model from a changed one."""
    import rebuild_embedded

    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    b = {"w": a["w"].clone()}
    assert rebuild_embedded.tensor_manifest(a) == rebuild_embedded.tensor_manifest(b)
    b["w"][1, 2] = torch.nextafter(b["w"][1, 2], torch.tensor(100.0))  # one ulp
    assert rebuild_embedded.tensor_manifest(a)["w"]["sha256"] != rebuild_embedded.tensor_manifest(b)["w"]["sha256"]


def test_committed_results_name_the_card_and_versions():
    res = ROOT / "benchmarks" / "results"
    dpo = json.loads((res / "bench_dpo_gpu.json").read_text())
    assert dpo and all("error" not in r for r in dpo)
    for r in dpo:
        assert r["env"]["gpu"].startswith("NVIDIA H100") and r["env"]["transformers"] and r["env"]["trl"]
        assert r["tokens_per_step"] == 2 * r["seq_len"] * r["batch_pairs"]  # no silently short sequences


def test_committed_gpu_small_run_is_complete_and_matches_its_report():
    """The H100 end-to-end run in reports/gpu-small-h100: all five stages done, Unsloth trained,
    and the table in reports/benchmarks.md quotes the manifest's own figures."""
    d = ROOT / "reports" / "gpu-small-h100"
    m = json.loads((d / "manifest.json").read_text())
    assert m["hardware"]["gpus"][0]["name"].startswith("NVIDIA H100")
    assert [m["stages"][k]["status"] for k in ("00", "01", "02", "03", "04")] == ["done"] * 5
    assert m["stages"]["02"]["backend"] == "unsloth" and m["stages"]["02"]["finished"]
    assert m["stages"]["01"]["pairs_kept"] == 130 and m["stages"]["02"]["steps"] == 51
    assert m["approval"] == {"adapter_approved": False, "verdict": "FAIL"}
    assert all((d / f"{nb}.html").exists() for nb in ("00_baseline", "01_generate", "02_train", "03_evaluate", "04_report"))
    text = (ROOT / "reports" / "benchmarks.md").read_text()
    assert "**130 pairs kept**" in text and "51 steps" in text and "c = 114" in text


# --------------------------------------------------------------------------- CUDA

@cuda
@pytest.mark.skipif(not _has("bitsandbytes"), reason="needs bitsandbytes")
@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantized_load_and_batched_generation(tiny_model_dir, quant):
    from cai_lib.generate import generate
    from cai_lib.models import load_base

    loaded = load_base(str(tiny_model_dir), quantization=quant, backend="transformers")
    kinds = {type(m).__name__ for m in loaded.model.modules()}
    assert ({"Linear4bit"} if quant == "4bit" else {"Linear8bitLt"}) <= kinds
    assert next(loaded.model.parameters()).device.type == "cuda"
    recs = generate(loaded.model, loaded.tokenizer, ["Q: What is two plus two?\nA:", "The sky is"],
                    max_new_tokens=5, batch_size=2, progress=False)
    assert [r["finish_reason"] in {"eos", "length"} for r in recs] == [True, True]
    assert all(1 <= r["new_tokens"] <= 5 for r in recs)


@cuda
def test_adapter_toggle_gives_base_logits_with_one_copy_of_weights(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cai_lib.adapters import adapter_disabled

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).to("cuda").eval()
    ids = torch.tensor([[2, 10, 11, 12, 13]], device="cuda")
    with torch.no_grad():
        want = base(input_ids=ids).logits
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    before = torch.cuda.memory_allocated()
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).eval()
    added = torch.cuda.memory_allocated() - before
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        with adapter_disabled(model):
            toggled = model(input_ids=ids).logits
    assert not torch.allclose(trained, want)  # the adapter does something
    assert torch.equal(toggled, want)  # and switching it off is exactly the base model
    assert added < weights  # the adapter, not a second copy of the base
