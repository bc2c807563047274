"""Evaluation memory: one 8-bit model with its LoRA adapter toggled vs two loaded 8-bit models.

Base-vs-trained evaluation needs the base model and the base model + adapter. Toggling the
adapter (PEFT `disable_adapter()`) keeps one copy of the base weights; loading a second model
doubles them. This measures both at a real shape (random weights, LoRA r=32 on all linear
projections), including the peak during a generation batch (KV cache), and writes the numbers
the 32B extrapolation in reports/benchmarks.md is computed from (`extrapolate()`).

    python benchmarks/bench_eval_memory.py --shape qwen7b --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
import gpu_shapes  # noqa: E402

GIB = 2**30
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _load_8bit(mdir):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(
        str(mdir), quantization_config=BitsAndBytesConfig(load_in_8bit=True), dtype=torch.bfloat16,
        device_map={"": 0}, attn_implementation="sdpa").eval()


def _add_adapter(model, rank):
    import torch
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, task_type="CAUSAL_LM"))
    with torch.no_grad():  # a trained adapter has non-zero B; make this one change outputs too
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    return m.eval()


def _gen_peak(model, tok, prompts, max_new_tokens, batch) -> dict:
    import torch
    from cai_lib.generate import generate

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    recs = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch, progress=False)
    torch.cuda.synchronize()
    return {"peak_gib": torch.cuda.max_memory_allocated() / GIB, "seconds": time.perf_counter() - t0,
            "new_tokens": sum(r["new_tokens"] for r in recs), "responses": [r["response"] for r in recs]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default="bench_eval_memory.json")
    p.add_argument("--models", default="/tmp/bench_models")
    p.add_argument("--shape", default="qwen7b")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    a = p.parse_args(argv)

    import torch
    mdir = gpu_shapes.build_model_dir(a.shape, Path(a.models) / a.shape)
    tok = gpu_shapes.load_tokenizer(mdir)
    rng = random.Random(0)
    prompts = [gpu_shapes.random_text(rng, rng.randint(40, 120)) for _ in range(a.batch)]
    res = {"env": gpu_shapes.gpu_info(), "shape": a.shape, "rank": a.rank, "batch": a.batch,
           "max_new_tokens": a.max_new_tokens, "params": gpu_shapes.param_counts(a.shape)}

    torch.cuda.empty_cache()
    m0 = torch.cuda.memory_allocated()
    base = _load_8bit(mdir)
    res["one_base_weights_gib"] = (torch.cuda.memory_allocated() - m0) / GIB
    peft_model = _add_adapter(base, a.rank)
    res["toggle_weights_gib"] = (torch.cuda.memory_allocated() - m0) / GIB
    trained = _gen_peak(peft_model, tok, prompts, a.max_new_tokens, a.batch)
    with peft_model.disable_adapter():
        base_out = _gen_peak(peft_model, tok, prompts, a.max_new_tokens, a.batch)
    res["toggle"] = {"weights_gib": res["toggle_weights_gib"],
                     "peak_gib": max(trained["peak_gib"], base_out["peak_gib"]) - m0 / GIB,
                     "gen_seconds": trained["seconds"] + base_out["seconds"],
                     "outputs_differ": sum(x != y for x, y in zip(trained["responses"], base_out["responses"]))}
    # The second arrangement: keep this model (with adapter) and load another base copy.
    second = _load_8bit(mdir)
    res["two_models_weights_gib"] = (torch.cuda.memory_allocated() - m0) / GIB
    b2 = _gen_peak(second, tok, prompts, a.max_new_tokens, a.batch)
    t2 = _gen_peak(peft_model, tok, prompts, a.max_new_tokens, a.batch)
    res["two_models"] = {"weights_gib": res["two_models_weights_gib"],
                         "peak_gib": max(b2["peak_gib"], t2["peak_gib"]) - m0 / GIB,
                         "gen_seconds": b2["seconds"] + t2["seconds"],
                         "base_outputs_equal_toggle_base": sum(x == y for x, y in zip(b2["responses"], base_out["responses"]))}
    res["extrapolation_32b"] = extrapolate(res)
    Path(a.json).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "env"}, indent=1))
    return 0


def extrapolate(res: dict, target: str = "qwen32b") -> dict:
    """Scale the measured 8-bit weight bytes and generation overhead from the measured shape to `target`.

    weights: bytes/param of the quantized linear layers from the measurement, after taking
    out the bf16 embedding and lm_head (bitsandbytes keeps lm_head unquantized; the embedding
    is never quantized); generation overhead (KV cache + activations) scales with
    layers x kv width per token, so it is scaled by that ratio at the same batch and length.
    """
    src, dst = res["params"], gpu_shapes.param_counts(target)
    s_src, s_dst = gpu_shapes.SHAPES[res["shape"]], gpu_shapes.SHAPES[target]
    bf16_src = 2 * (src["embedding"] + (0 if src["tied"] else src["lm_head"]))
    lin_bpp = (res["one_base_weights_gib"] * GIB - bf16_src) / (src["layers_linear"] + src["layer_bias"])
    bf16_dst = 2 * (dst["embedding"] + (0 if dst["tied"] else dst["lm_head"]))
    w_dst = lin_bpp * (dst["layers_linear"] + dst["layer_bias"]) + bf16_dst
    lora_src = res["toggle_weights_gib"] - res["one_base_weights_gib"]
    lora_dst = lora_src * (dst["layers"] * dst["hidden"]) / (src["layers"] * src["hidden"])  # r*(in+out) per module

    def kvw(s):
        hd = s.get("head_dim") or s["hidden_size"] // s["num_attention_heads"]
        return s["num_hidden_layers"] * s["num_key_value_heads"] * hd

    gen_src = res["toggle"]["peak_gib"] - res["toggle_weights_gib"]
    gen_dst = gen_src * kvw(s_dst) / kvw(s_src)
    one = w_dst / GIB + lora_dst + gen_dst
    two = 2 * w_dst / GIB + lora_dst + gen_dst
    return {"target": target, "linear_bytes_per_param_measured": lin_bpp, "weights_gib": w_dst / GIB,
            "lora_gib": lora_dst, "generation_overhead_gib": gen_dst, "toggle_total_gib": one,
            "two_models_total_gib": two,
            "arithmetic": (f"{(dst['layers_linear'] + dst['layer_bias']) / 1e9:.2f}e9 linear params x {lin_bpp:.3f} B"
                           f" + {bf16_dst / 1e9:.2f} GB bf16 embedding/lm_head = {w_dst / GIB:.1f} GiB weights;"
                           f" toggle = weights + LoRA {lora_dst:.2f} + generation {gen_dst:.2f} = {one:.1f} GiB;"
                           f" two models = 2 x weights + ... = {two:.1f} GiB")}


if __name__ == "__main__":
    sys.exit(main())
