"""Pre-flight: will each stage fit on this card, and how long will it take? Pure arithmetic.

Inputs: the model's config.json as a dict, the run's profile values (RunConfig fields) and the
card's memory in GiB. No torch, no model load: a researcher sees the answer before renting
hours. `check()` returns one `Finding` per stage; a stage that will not fit names the profile
key to change and the largest batch that stays under 85% of the usable memory.

Memory (GiB = 2**30 bytes), per stage
-------------------------------------
Shape: L layers, hidden h, intermediate i, vocabulary V, q width = heads * head_dim,
kv width = kv_heads * head_dim. Linear parameters P_lin = L * (h*q + 2*h*kv + q*h + 3*h*i).

    weights   = P_lin * B_lin[quantization] + (V*h * (1 if tied else 2) + norms) * B_emb
                B_lin: 4bit 0.546 B (nf4 + double-quant stats, Unsloth at 7B; transformers+bnb 0.518),
                       8bit 1.001 B (LLM.int8, 7B), none 2 B (bf16) or 4 B (fp32)
                B_emb: 2 (bf16; bitsandbytes leaves embedding, lm_head and norms unquantized),
                       4 for the transformers+bnb training backend (prepare_model_for_kbit_training
                       upcasts them to fp32)
    lora      = P_lora = L * r * (2h+q + 2(h+kv) + (q+h) + 3(h+i))  [all seven projections]
                training: P_lora * 16 B (fp32 weight, gradient, two Adam moments)
                evaluation (adapter loaded for inference): P_lora * 4 B
    kv_cache  = 2 * L' * kv_heads * head_dim * 2 B * batch * (prompt + new)
                (L' counts sliding-window layers with min(tokens, window) positions; a static
                cache holds the next power of two >= prompt + new, at least 512 positions)
    generation stages load `gen_quantization` weights (as_train = `quantization`); the cache is
    static when gen_cache is static, or auto with unquantized weights (generate.pick_cache)
    prefill   = batch * prompt * (G_H*h + G_I*i) * 2 B        one layer's working set, G_H=4, G_I=3
    decode    = batch * V * 6 B                               last-position logits bf16 + fp32 copy
    dequant   = max linear weight * 2 B                       bitsandbytes dequantizes one weight at a time
    generation stage = weights + lora(eval only) + kv_cache + prefill + decode + dequant

    DPO micro-batch: S = 2 * per_device_batch_size sequences (chosen and rejected) of T tokens,
    T = min(max_length, INSTRUCTION_TOKENS + data_max_new_tokens + 2): the prompt is the raw
    instruction (<= 22 tokens in the package's pools), the completion is capped by generation
    plus separator and EOS; TRL pads to the longest in the batch.
    act (gradient_checkpointing) = S*T*h*2 B * L  +  S*T*(C_H*h + C_I*i)*2 B   (saved layer inputs +
                                   one layer recomputed), C_H=6, C_I=2
    act (no checkpointing)       = S*T*(C_H*h + C_I*i)*2 B * L * C_NOCKPT, C_NOCKPT=4
    logits                       = S*T*V * C_V, C_V=0.5 B per logit (far below bf16: the measured
                                   peaks show the full logits are never held at once)
    training stage = weights + lora + act + logits
    C_H, C_I, C_V are a grid fit (smallest worst relative error) to the three measured training
    peaks below, with C_NOCKPT=4 fixed: the two Qwen points ran with checkpointing, the Gemma
    point without. Three constants, three points: agreement there is by construction, not a
    validation; the 32B rehearsal is the first independent check.

Fit: a stage fits when its estimate <= gpu_gib * USABLE (0.95: CUDA context, allocator slack);
WARN above 0.85 of that.

Time (upper bounds: every generation runs to its max_new_tokens, every pair is kept)
--------------------------------------------------------------------------------------
    decode step  = L * S_LAYER[quantization] + weight_bytes / HBM_BW
                   S_LAYER: 4bit 5.6 ms (gpu-small on the H100: 101 ms per step, 18 layers),
                   8bit 18.2 ms (7B: 0.51 s per step, 28 layers), none 1.3 ms (1.5B bf16 batch 1),
                   none + compiled static cache 0.2 ms (H200, 270M bf16: 3.5 ms per step, 18 layers);
                   HBM_BW 3.0e12 B/s (H100/H200 class)
                   + 2 * N_mm * batch / (PEAK * MFU)   (the matmuls; small next to the launches)
    prefill      = 2 * N_mm * batch * prompt / (PEAK * MFU)
    a generation stage = batches * (prefill + new_tokens * decode_step), + batch-1 determinism runs,
                   + the stage process (STAGE_PROCESS_S 30 s + weights / LOAD_BW 0.5 GB/s)
                   + compiling a static cache's step, cold, per graph: 30 s (batch) + 20 s (batch 1);
                   stage 03 has one graph with the adapter merged (eval_adapter), two unmerged
                   (adapter off, on). H200, 270M; warm later stages pay ~11 s.
    DPO micro-step = S*T * N_mm * K / (PEAK * MFU), N_mm = P_lin + V*h (lm_head matmul),
                   K = 6 with gradient checkpointing (fwd 2 + bwd to activations 2 + recompute 2),
                   4 without; reference log-probs: 2*N_mm per token once (precompute) or per step;
                   PEAK 989e12 FLOP/s (H100 SXM dense bf16), MFU 0.25 (7B Unsloth: 25.5-26.9%)
    optimizer steps = ceil(pairs / (batch * accumulation)) * epochs, pairs <= n_train_items
    floors for small models (overhead-bound): a micro-step >= 0.35 s, precomputed reference
                   log-probs >= 0.20 s per batch (gpu-small, 270M, H200: 0.24 s per step, 11 s for
                   69 batches); the training stage adds the same process + load cost
    The result for gpu-small on an H200 (2026-12-04): 368 s measured, this model ~9 min; with the
    adapter merged for stage 03 (one compiled graph there), 339 s measured cold, ~8 min estimated.

Calibration (measured peaks, benchmarks in reports/benchmarks.md; tests/test_preflight.py
checks every one is within 15%): Qwen2.5-7B DPO step Unsloth 7.04 GiB, Qwen2.5-1.5B 1.97 GiB
(4 pairs x 384 tokens, r=16, checkpointing); Qwen2.5-7B 8-bit evaluation, adapter toggled,
batch 16, 9.23 GiB; embedded Gemma 3 270M `gpu-small` stage 02 2.05 GiB and stage 03 0.66 GiB.
Independent check, Qwen2.5-32B shape (random weights, nf4, H200 capped at 80 GB, 2026-12-03,
benchmarks/results/rehearse_32b_h200/): weights 17.9 GiB loaded vs 18.8 estimated; the
generation formula at every batch the OOM searches timed, with their own prompt lengths, is
5-10% above the measured peak (revision frames 642 + 128 tokens: batch 32/64/128 measured
26.9/35.9/53.9 GiB, estimated 29.0/39.0/59.0; evaluation 21 + 128 tokens, adapter on, batch
32-512: 20.4-39.2 measured, ratio 1.05); batch 256 of revision frames ran out of memory at
75.5 GiB where the formula says 99 GiB; DPO (4 pairs x 150 tokens, r=32, checkpointing)
22.1 GiB Unsloth, 25.4 GiB transformers+bnb, estimated 23.8. tests/test_preflight.py keeps
every point within 15%. Times there: 4-bit decoding 0.26-0.34 s per step at batch 32
(0.155 at batch 1), so S_LAYER["4bit"] = 5.6 ms x 64 layers (0.36 s) is an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import CaiError

GIB = 2**30
USABLE = 0.95
WARN = 0.85

B_LIN = {"4bit": 0.546, "8bit": 1.001}
B_LIN_BNB_TRANSFORMERS_4BIT = 0.518
G_H, G_I = 4, 3
C_H, C_I, C_NOCKPT, C_V = 6, 2, 4, 0.5
DECODE_LOGIT_BYTES = 6
S_LAYER = {"4bit": 5.6e-3, "8bit": 18.2e-3, "none": 1.3e-3, "none_static": 0.2e-3}
MIN_STATIC_CACHE = 512  # generate.MIN_CACHE_LEN
HBM_BW = 3.0e12
PEAK_FLOPS, MFU = 989e12, 0.25
UNSLOTH_COMPILE_S = 45.0  # first-step compilation seen at 7B (42 s); a fixed cost per session
# Fixed costs the FLOP model does not see, which dominate a small model's run (issue 13: the
# model above put gpu-small at ~41 s while it took 368 s of stage time on an H200):
STAGE_PROCESS_S = 30.0  # notebook kernel, imports, HTML render: gpu-small stage 04 took 8 s, stage 02 27 s beyond training
LOAD_BW = 0.5e9  # bytes/s loading weights: the 32B shape's 17.9 GiB nf4 loaded in 21-33 s (0.6-0.9 GB/s)
# a compiled static cache, cold: first shape (batch), second (batch 1), H200, rounded up from
# 26.4 + 18.2 s with the fill level marked dynamic (kv_cache; 60.4 + 20.4 s before)
COMPILE_SHAPE_S = (30.0, 20.0)
# per micro-step: gpu-small's 270M bf16 LoRA averaged 0.24-0.32 s in three H200 runs (8 pairs,
# logging, saves; 0.32 s = 67.1 s of TRL runtime for 207 steps, the slowest)
TRAIN_MICRO_FLOOR_S = 0.35
REF_BATCH_FLOOR_S = 0.20  # per batch of precomputed reference log-probs: 545 pairs / 8 in 11 s there

# Prompt lengths in tokens, measured on the package's own frames with the Qwen-like byte BPE
# of benchmarks/build_shape_checkpoint.py (~1.2 tokens per word; a real tokenizer differs by
# tens of percent). Longest instruction 22 tokens; longest 3-example frames without the
# inserted instruction/answer/critique; longest stage-00 prompt (few_shot format) 148.
INSTRUCTION_TOKENS = 22
FRAME_TOKENS = {"response": 143, "sample": 143, "critique": 335, "revision": 382, "raw": 0}  # sample: the response frame
BASELINE_PROMPT_TOKENS = 148
STARTER_ITEMS = 144
# self_consistency's "sample" step decodes the response frame pair_sc_k times (one pass each)
PAIR_STEPS = {"format_distillation": ("response", "raw"), "critique_revision": ("response", "critique", "revision"),
              "self_consistency": ("response", "sample", "raw")}


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    sliding_window: int | None = None
    sliding_layers: int = 0

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def linear_params(self) -> int:
        h, q, kv, i = self.hidden, self.q, self.kv, self.intermediate
        return self.layers * (h * q + 2 * h * kv + q * h + 3 * h * i)

    @property
    def unquantized_params(self) -> int:
        emb = self.vocab * self.hidden * (1 if self.tied else 2)
        return emb + self.layers * 4 * self.hidden + self.hidden  # norms (<= 4 per layer)

    @property
    def matmul_params(self) -> int:
        return self.linear_params + self.vocab * self.hidden  # lm_head runs at every position

    def lora_params(self, r: int) -> int:
        h, q, kv, i = self.hidden, self.q, self.kv, self.intermediate
        return self.layers * r * ((h + q) + 2 * (h + kv) + (q + h) + 3 * (h + i))


def shape_from_config(model_config: dict) -> Shape:
    """The numbers that set memory, from a transformers config.json dict (text_config if nested)."""
    if not isinstance(model_config, dict):
        raise CaiError("preflight: model_config must be the model's config.json as a dict")
    c = model_config.get("text_config") or model_config
    need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in need if not isinstance(c.get(k), int) or c.get(k) <= 0]
    if missing:
        raise CaiError(f"preflight: model config lacks a positive integer {missing[0]!r} — pass the model folder's config.json")
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    types = c.get("layer_types") or []
    window = c.get("sliding_window") if types else None
    return Shape(vocab=c["vocab_size"], hidden=c["hidden_size"], intermediate=c["intermediate_size"],
                 layers=c["num_hidden_layers"], heads=heads, kv_heads=c.get("num_key_value_heads") or heads,
                 head_dim=head_dim, tied=bool(model_config.get("tie_word_embeddings", c.get("tie_word_embeddings", False))),
                 sliding_window=window, sliding_layers=sum(t == "sliding_attention" for t in types) if window else 0)


# ---- memory --------------------------------------------------------------------------------

def _dtype_bytes(cfg: dict) -> int:
    return 4 if cfg.get("dtype") in ("float32", "fp32") else 2  # auto = bf16 on CUDA


def weights_bytes(s: Shape, cfg: dict, *, training_backend: str | None = None) -> float:
    quant = cfg.get("quantization", "none")
    emb_bytes = 2 if quant != "none" else _dtype_bytes(cfg)
    b_lin = B_LIN.get(quant, _dtype_bytes(cfg))
    if training_backend == "transformers" and quant == "4bit":
        b_lin, emb_bytes = B_LIN_BNB_TRANSFORMERS_4BIT, 4  # prepare_model_for_kbit_training: fp32 upcast
    return s.linear_params * b_lin + s.unquantized_params * emb_bytes


def generation_cfg(cfg: dict) -> dict:
    """The profile as the generation stages see it: gen_quantization's weights, the cache kind."""
    gq = cfg.get("gen_quantization", "as_train")
    quant = cfg.get("quantization", "none") if gq in (None, "as_train") else gq
    cache = cfg.get("gen_cache", "auto")
    return {**cfg, "quantization": quant, "static_cache": cache == "static" or (cache == "auto" and quant == "none")}


def static_cache_tokens(tokens: int) -> int:
    return max(MIN_STATIC_CACHE, 1 << max(0, tokens - 1).bit_length())


def kv_cache_bytes(s: Shape, batch: int, tokens: int, dtype_bytes: int = 2) -> float:
    """2 (K and V) * layers * kv_heads * head_dim * bytes * batch * tokens (windowed layers capped)."""
    full = s.layers - s.sliding_layers
    windowed = min(tokens, s.sliding_window) if s.sliding_window else tokens
    positions = full * tokens + s.sliding_layers * windowed
    return 2 * s.kv * dtype_bytes * batch * positions


def generation_bytes(s: Shape, cfg: dict, *, batch: int, prompt: int, new: int, with_lora: bool) -> dict:
    parts = {
        "weights": weights_bytes(s, cfg),
        "lora": s.lora_params(int(cfg.get("lora_r", 16))) * 4 if with_lora else 0.0,
        "kv_cache": kv_cache_bytes(s, batch, static_cache_tokens(prompt + new) if cfg.get("static_cache") else prompt + new),
        "prefill": batch * prompt * (G_H * s.hidden + G_I * s.intermediate) * 2,
        "decode_logits": batch * s.vocab * DECODE_LOGIT_BYTES,
        "dequant": s.hidden * max(s.intermediate, s.q) * 2 if cfg.get("quantization", "none") != "none" else 0.0,
    }
    return parts


def train_seq_tokens(cfg: dict) -> int:
    return min(int(cfg.get("max_length", 256)), INSTRUCTION_TOKENS + int(cfg.get("data_max_new_tokens", 48)) + 2)


def training_bytes(s: Shape, cfg: dict, *, seq_tokens: int | None = None, backend: str = "unsloth") -> dict:
    seqs = 2 * int(cfg.get("per_device_batch_size", 4))
    t = seq_tokens or train_seq_tokens(cfg)
    layer_set = seqs * t * (C_H * s.hidden + C_I * s.intermediate) * 2
    if cfg.get("gradient_checkpointing", False):
        act = seqs * t * s.hidden * 2 * s.layers + layer_set
    else:
        act = layer_set * s.layers * C_NOCKPT
    return {"weights": weights_bytes(s, cfg, training_backend=backend),
            "lora_optimizer": s.lora_params(int(cfg.get("lora_r", 16))) * 16,
            "activations": act, "logits": seqs * t * s.vocab * C_V}


# ---- time ----------------------------------------------------------------------------------

def decode_step_s(s: Shape, cfg: dict, batch: int = 1) -> float:
    quant = cfg.get("quantization", "none")
    key = "none_static" if quant == "none" and cfg.get("static_cache") else quant
    return (s.layers * S_LAYER.get(key, S_LAYER["none"]) + weights_bytes(s, cfg) / HBM_BW
            + 2 * s.matmul_params * batch / (PEAK_FLOPS * MFU))


def _batch_s(s, cfg, batch: int, prompt: int, new: int) -> float:
    return 2 * s.matmul_params * batch * prompt / (PEAK_FLOPS * MFU) + new * decode_step_s(s, cfg, batch)


def _gen_seconds(s, cfg, n_prompts: int, batch: int, prompt: int, new: int, determinism: int = 0,
                 passes: int = 1, extra_batches: int = 0) -> float:
    # each pass (a generate() call over n_prompts) rounds its batches up on its own
    batched = passes * math.ceil(n_prompts / batch) + extra_batches if n_prompts else 0
    det = math.ceil(determinism / batch) if determinism else 0  # the batched half of the check
    return (batched + det) * _batch_s(s, cfg, batch, prompt, new) + determinism * _batch_s(s, cfg, 1, prompt, new)


def _compile_s(cfg: dict, graphs: int) -> float:
    """Compiling a static cache's decoding step: both shapes (batch, batch 1) per graph, cold.

    An upper bound: a later stage of the same run finds its shapes in torch's on-disk cache
    (7.1 + 3.8 s instead of 26.4 + 18.2, same H200) when it compiles them in the same order."""
    return graphs * sum(COMPILE_SHAPE_S) if cfg.get("static_cache") and cfg.get("quantization", "none") == "none" else 0.0


def _eval_graphs(gcfg: dict) -> int:
    """Compiled graphs stage 03 decodes with: one when the adapter is merged into the weights
    after the base arms (evaluate.adapter_plan: auto merges unquantized weights on a GPU), two
    when it stays unmerged (adapter off, adapter on)."""
    mode = gcfg.get("eval_adapter", "auto")
    merged = mode == "merged" or (mode == "auto" and gcfg.get("quantization", "none") == "none")
    return 1 if merged else 2


def _process_s(s: Shape, cfg: dict) -> float:
    """A stage process's fixed cost: kernel, imports, HTML, and reading the weights once."""
    return STAGE_PROCESS_S + weights_bytes(s, cfg) / LOAD_BW


def _train_seconds(s: Shape, cfg: dict, seq_tokens: int, backend: str) -> dict:
    pairs = int(cfg.get("n_train_items", 0))
    b, acc = int(cfg.get("per_device_batch_size", 4)), int(cfg.get("gradient_accumulation_steps", 1))
    steps = math.ceil(pairs / (b * acc)) * float(cfg.get("num_epochs", 1))
    if int(cfg.get("max_steps", -1) or -1) > 0:
        steps = int(cfg["max_steps"])
    tokens = 2 * b * seq_tokens
    k = 6 if cfg.get("gradient_checkpointing") else 4
    precompute = cfg.get("precompute_ref_log_probs", True)
    # a small model's step is bound by overhead, not FLOPs: never below the measured floor
    micro = max(TRAIN_MICRO_FLOOR_S, tokens * s.matmul_params * (k + (0 if precompute else 2)) / (PEAK_FLOPS * MFU))
    ref_b = int(cfg.get("ref_batch_size", 0) or 0) or b
    ref = max(REF_BATCH_FLOOR_S * math.ceil(pairs / ref_b),
              2 * pairs * seq_tokens * s.matmul_params * 2 / (PEAK_FLOPS * MFU)) if precompute else 0.0
    compile_s = UNSLOTH_COMPILE_S if backend == "unsloth" and cfg.get("unsloth_compile") else 0.0
    overhead = _process_s(s, cfg)
    return {"optimizer_steps": math.ceil(steps), "micro_step_s": micro, "step_s": micro * acc,
            "reference_s": ref, "overhead_s": overhead, "compile_s": compile_s,
            "seconds": math.ceil(steps) * micro * acc + ref + compile_s + overhead}


# ---- stages --------------------------------------------------------------------------------

def _stage_plan(cfg: dict) -> list[dict]:
    """Each generating stage's largest prompt, new tokens and prompt counts (upper bounds)."""
    batch = int(cfg.get("gen_batch_size", 16))
    n_base = int(cfg.get("baseline_n_items", 32))
    n_items = STARTER_ITEMS if n_base <= 0 else min(STARTER_ITEMS, n_base)
    n_formats = len(cfg.get("baseline_formats") or ["raw", "instruction_response", "qa", "few_shot"])
    det = int(cfg.get("determinism_sample", 8))
    dmax = int(cfg.get("data_max_new_tokens", 48))
    steps = PAIR_STEPS.get(cfg.get("pair_strategy", "format_distillation"), PAIR_STEPS["critique_revision"])
    inserted = {"response": 0, "sample": 0, "raw": 0, "critique": dmax, "revision": 2 * dmax}  # answer (+ critique) pasted in
    longest01 = max(FRAME_TOKENS[st] + INSTRUCTION_TOKENS + inserted[st] for st in steps)
    new00, new03 = int(cfg.get("baseline_max_new_tokens", 48)), int(cfg.get("eval_max_new_tokens", 48))
    return [
        {"stage": "00_baseline", "batch": batch, "prompt": BASELINE_PROMPT_TOKENS, "new": new00, "lora": False,
         "prompts": n_items * n_formats, "passes": 1, "extra": 1,  # + one call for the 6 sentinels
         "determinism": min(det, n_items), "new_key": "baseline_max_new_tokens"},
        {"stage": "01_generate", "batch": batch, "prompt": longest01, "new": dmax, "lora": False,
         "prompts": int(cfg.get("n_train_items", 0)), "passes": len(steps) - 1 + int(cfg.get("pair_sc_k", 4)) if "sample" in steps else len(steps), "extra": 0,
         "determinism": 0, "new_key": "data_max_new_tokens"},
        # three arms on the same items: base raw, trained raw, and base with the few-shot
        # response frame (issue 12's in-context arm) - its prompts are the stage's longest, so
        # they set the memory peak; every pass is charged at that length (an upper bound)
        {"stage": "03_evaluate", "batch": batch, "prompt": FRAME_TOKENS["response"] + INSTRUCTION_TOKENS,
         "new": new03, "lora": True, "prompts": int(cfg.get("n_eval_items", 0)), "passes": 3, "extra": 0,
         "determinism": det, "new_key": "eval_max_new_tokens"},
    ]


def _training_backend(cfg: dict) -> str:
    """What models.pick_backend (the one backend decision) picks for training on a CUDA machine
    with the gpu extra installed, in this module's two memory vocabularies."""
    from .models import pick_backend  # no torch at import: the pre-flight stays arithmetic

    b = pick_backend(cfg.get("backend", "auto"), "train", cfg.get("quantization", "none"), 1, cuda=True, unsloth=True)
    return "unsloth" if b == "unsloth" else "transformers"


def _with_defaults(cfg_values: dict) -> dict:
    """The profile's values over RunConfig's defaults (a profile states only what differs)."""
    from .config import RunConfig
    if not isinstance(cfg_values, dict):
        raise CaiError("preflight: cfg_values must be a mapping of RunConfig fields (RunConfig.to_dict())")
    return {**RunConfig().to_dict(), **cfg_values}


def estimate(model_config: dict, cfg_values: dict, *, seq_tokens: int | None = None,
             training_backend: str | None = None) -> dict:
    """Per stage: {"gib", "parts" (GiB), "seconds", ...}; plus "total_hours"."""
    s = shape_from_config(model_config)
    cfg = _with_defaults(cfg_values)
    gcfg = generation_cfg(cfg)
    out: dict = {}
    for p in _stage_plan(cfg):
        parts = generation_bytes(s, gcfg, batch=p["batch"], prompt=p["prompt"], new=p["new"], with_lora=p["lora"])
        out[p["stage"]] = {
            "gib": sum(parts.values()) / GIB, "parts": {k: v / GIB for k, v in parts.items()},
            "batch": p["batch"], "prompt_tokens": p["prompt"], "new_tokens": p["new"],
            "work_s": _gen_seconds(s, gcfg, p["prompts"], p["batch"], p["prompt"], p["new"], p["determinism"],
                                   p["passes"], p["extra"]),
            "overhead_s": _process_s(s, gcfg),
            "compile_s": _compile_s(gcfg, _eval_graphs(gcfg) if p["lora"] else 1),
            "decode_step_s": decode_step_s(s, gcfg, p["batch"]), "quantization": gcfg["quantization"],
            "static_cache": gcfg["static_cache"], "batch_key": "gen_batch_size", "length_key": p["new_key"],
            "per_batch_bytes": sum(v for k, v in parts.items() if k in ("kv_cache", "prefill", "decode_logits")) / p["batch"],
            "fixed_bytes": sum(v for k, v in parts.items() if k not in ("kv_cache", "prefill", "decode_logits")),
        }
    for v in out.values():
        v["seconds"] = v["work_s"] + v["overhead_s"] + v["compile_s"]
    backend = training_backend or _training_backend(cfg)
    t = seq_tokens or train_seq_tokens(cfg)
    parts = training_bytes(s, cfg, seq_tokens=t, backend=backend)
    per_pair = (parts["activations"] + parts["logits"]) / int(cfg.get("per_device_batch_size", 4))
    out["02_train"] = {"gib": sum(parts.values()) / GIB, "parts": {k: v / GIB for k, v in parts.items()},
                       "batch": int(cfg.get("per_device_batch_size", 4)), "seq_tokens": t, "backend": backend,
                       "batch_key": "per_device_batch_size", "length_key": "max_length",
                       "per_batch_bytes": per_pair, "fixed_bytes": parts["weights"] + parts["lora_optimizer"],
                       **_train_seconds(s, cfg, t, backend)}
    order = ["00_baseline", "01_generate", "02_train", "03_evaluate"]
    result = {k: out[k] for k in order}
    result["total_hours"] = sum(v["seconds"] for v in result.values()) / 3600
    return result


@dataclass
class Finding:
    stage: str
    level: str  # ok | warn | refuse
    gib: float
    limit_gib: float
    key: str | None = None
    suggest: int | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        head = f"{self.stage}: {self.level.upper()} estimated peak {self.gib:.1f} GiB of {self.limit_gib:.1f} GiB usable"
        if self.level == "ok":
            return f"{head}; ~{duration(self.seconds)}"
        if self.suggest is None:
            return f"{head} — even batch 1 does not fit: set quantization: 4bit or use a larger card"
        if self.level == "warn":
            return f"{head}; little headroom — {self.key}: {self.suggest} stays under {WARN:.0%} of it"
        return f"{head} — set {self.key}: {self.suggest} (largest under {WARN:.0%} of usable) or use a larger card"


def duration(seconds: float) -> str:
    """Seconds below 2 minutes, minutes below 2 hours, else hours ("~0 min" said nothing at 270M)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check(model_config: dict, cfg_values: dict, gpu_gib: float) -> list[Finding]:
    """One Finding per stage: ok, warn (> 85% of usable) or refuse (over usable = 95% of the card)."""
    if not isinstance(gpu_gib, (int, float)) or gpu_gib <= 0:
        raise CaiError(f"preflight: gpu memory must be a positive number of GiB, got {gpu_gib!r}")
    limit = gpu_gib * USABLE
    findings = []
    for stage, e in estimate(model_config, cfg_values).items():
        if stage == "total_hours":
            continue
        level = "refuse" if e["gib"] > limit else "warn" if e["gib"] > WARN * limit else "ok"
        suggest = None
        if level != "ok":
            fits = math.floor((WARN * limit * GIB - e["fixed_bytes"]) / e["per_batch_bytes"])
            suggest = fits if fits >= 1 else None
        findings.append(Finding(stage, level, e["gib"], limit, e["batch_key"], suggest, e["seconds"]))
    return findings


def read_model_config(folder) -> dict:
    """config.json of a model folder as a dict (the first argument of estimate/check)."""
    import json
    from pathlib import Path

    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaiError(f"{path}: not found — preflight needs the model folder's config.json") from None
    except (OSError, ValueError) as exc:
        raise CaiError(f"{path}: cannot be read as JSON ({str(exc).splitlines()[0][:120]}) — fix or re-download it") from None
    if not isinstance(data, dict):
        raise CaiError(f"{path}: not a JSON object — pass a transformers config.json")
    return data


def summary_lines(model_config: dict, cfg_values: dict, gpu_gib: float) -> list[str]:
    """What `cai run --preflight` prints: one line per stage, then the whole run's time."""
    lines = [str(f) for f in check(model_config, cfg_values, gpu_gib)]
    hours = estimate(model_config, cfg_values)["total_hours"]
    lines.append(f"whole run: ~{duration(hours * 3600)} upper bound (every generation to its token limit, every item a pair)")
    return lines
