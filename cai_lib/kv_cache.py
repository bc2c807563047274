"""Which KV cache a generate() call decodes with, and the shapes a static cache compiles.

Two KV caches (`cache`, one of constants.GEN_CACHES):
- "dynamic": transformers' default; the cache grows each step, nothing is compiled.
- "static": a preallocated cache; on CUDA transformers compiles the decoding step
  (torch.compile, CUDA graphs), which removes the per-kernel launch overhead that bounds a
  small model. Compilation is per shape, so the shapes are bucketed: every batch is padded
  to the call's full batch size with copies of a real row (one shape per batch size: a
  partial last batch or a 6-prompt call reuses the compiled shape), and the cache length is
  rounded up to a power of two of at least MIN_CACHE_LEN, so raw, few-shot and data-stage
  prompts of every stage share one length and a later stage's process finds the shape in
  torch's on-disk compile cache. A run then compiles a handful of times, not per batch.
  Prefill is not compiled, so the prompt width itself is free. Shapes compiled in this
  process are remembered (`_COMPILED`): auto takes static for free on a shape it has.
- "auto": `pick_cache` - what measured faster on this kind of device, and on CUDA only
  when the call decodes enough steps to pay for compiling (see there).
"""

from __future__ import annotations

import weakref

from .constants import GEN_CACHES
from .errors import CaiError

# Smallest static cache length; lengths are powers of two from here (few compiled shapes).
# 512 holds a raw or few-shot prompt plus 64-128 new tokens, so stages 00, 01 and 03 decode at
# one length and share compiled code; attending over unused positions costs far less than a
# recompilation (tens of seconds each).
MIN_CACHE_LEN = 512


def _base_model(model):
    """The transformers model under a PEFT wrapper (quantization flags live there)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _device_type(model) -> str:
    return getattr(getattr(model, "device", None), "type", "cpu")


def _quantized(model) -> str | None:
    base = _base_model(model)
    if getattr(base, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(base, "is_loaded_in_8bit", False):
        return "8bit"
    return None


def _static_unsupported(model) -> str | None:
    """Why transformers cannot give this model a static cache, or None when it can."""
    base = _base_model(model)
    supports = getattr(base, "_supports_default_dynamic_cache", None)
    if callable(supports) and not supports():
        return f"{type(base).__name__} does not use transformers' Cache classes"
    return None


def compiles_decoding(model) -> bool:
    """Whether transformers will compile the decoding step under a static cache.

    Mirrors transformers' own rule (GenerationMixin._valid_auto_compile_criteria, 5.17 and
    5.24): an accelerator device, and no quantizer that declares itself not compileable
    (bitsandbytes 4-bit and 8-bit do, in both versions).
    """
    if _device_type(model) not in ("cuda", "xpu"):
        return False
    quantizer = getattr(_base_model(model), "hf_quantizer", None)
    return quantizer is None or bool(getattr(quantizer, "is_compileable", False))


# transformers' static cache keeps each sliding-window layer's fill level as a Python int
# (`cumulative_length_int`, transformers 5.17 and 5.24). torch.compile first takes it as a
# constant, so every process compiled the decoding step twice at its first shape: once with the
# prompt length baked in, then one step later with the fill level symbolic. Marked dynamic up
# front (torch.compiler.config.dynamic_sources) the step compiles once per shape. Measured on
# CPU (random-weight Gemma 3 with the 270M's 18 layers, torch 2.13, transformers 5.24,
# benchmarks/results/bench_compile_cache_cpu.json): first call at batch 16 59.4 -> 36.3 s with
# cold caches, 14.9 -> 8.5 s warm, the same tokens. (torch's precompile cache, its local PGO
# state and CompileConfig(dynamic=True) were tried there too and did not help.) The H200
# figure is for the next device run; there the first compile of the run was ~53 s cold and
# ~15 s warm per process.
FILL_LEVEL_ATTR = "cumulative_length_int"
CACHE_KWARGS = ("cache", "past_key_values")  # the cache's keyword argument: transformers 5.24, 5.17


def fill_level_sources(n_layers: int) -> list[str]:
    """dynamo's names for the fill level of every cache layer, under either keyword."""
    return [f"L['kwargs']['{kw}'].layers[{i}].{FILL_LEVEL_ATTR}" for kw in CACHE_KWARGS for i in range(n_layers)]


def mark_fill_level_dynamic(model) -> None:
    """Before a compiled static-cache call: the cache's fill level is symbolic from the first
    compile (one graph per shape, not two). Adds to torch.compiler.config.dynamic_sources,
    keeping whatever a user put there; a no-op once done for this many layers."""
    import torch

    cfg = getattr(_base_model(model), "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    if not n_layers:
        return
    current = [x for x in (torch.compiler.config.dynamic_sources or "").split(",") if x]
    missing = [x for x in fill_level_sources(n_layers) if x not in current]
    if missing:
        torch.compiler.config.dynamic_sources = ",".join(current + missing)


def static_generation_kwargs(model, cache_len: int) -> dict:
    """GenerationConfig keywords of a static-cache call at `cache_len` positions; when
    transformers will compile the step, the fill level is marked dynamic first (one graph)."""
    if compiles_decoding(model):
        mark_fill_level_dynamic(model)
    return {"cache_implementation": "static", "max_cache_len": cache_len}


# Decoding steps one compiled shape must save before its compilation has paid for itself.
# H200, Gemma 3 270M bf16, transformers 5.17, torch 2.11 (benchmarks/results/decoding_h200/,
# 2026-12-04): the first static call at batch 64 took 34.7 s cold (9.1 s in a fresh process with
# torch's on-disk compile cache warm) and each step then saved 35.4 ms (40.1 -> 4.7 ms); at
# batch 1, 42.2 s cold (13.9 s warm) for 22.7 ms a step (26.0 -> 3.3). Cold, batch 64:
# 34.7 s / 35.4 ms ~ 1,000 steps; the warm and batch-1 cases fall on either side of it.
STATIC_MIN_STEPS = 1000
# CPU (2 cores shared with other work at load 4-9, embedded Gemma 3 270M fp32, transformers
# 5.24, eval prompts; nothing is compiled on CPU): CPU seconds static/dynamic were 1.96x at
# batch 1 and 0.88x at batch 8 (24 new tokens, one run each), and 0.73x, 1.00x, 0.86x, 0.83x
# at batch 16 (48 new tokens, the cpu-quick setting, four interleaved pairs). The batch-1
# reference of every determinism check must decode on the same path, where static doubles
# the cost; against ~15% off the batched calls that is about even for cpu-quick, so dynamic
# stays the CPU default (gen_cache: static is there to take the batched gain).
CPU_MEASURE = ("auto: CPU, dynamic (static measured 1.96x the CPU time at batch 1 and 0.73-1.00x at "
               "batch 16, 2 cores; reports/benchmarks.md)")


def pick_cache(model, requested: str = "auto", *, decode_steps: int | None = None,
               shapes: int = 1) -> tuple[str, str]:
    """(cache kind, why) for this model on its device.

    shapes: how many shapes the call would have to compile (0 when this process already
    compiled them, see static_plan).
    auto, as measured:
    - CUDA, unquantized: static when its shapes are already compiled, or when the call
      decodes enough steps to pay for compiling them (decode_steps >= shapes *
      STATIC_MIN_STEPS; None = assume it does), else dynamic.
    - CUDA, bitsandbytes 4/8-bit: dynamic. transformers does not compile these models, so a
      static cache keeps the launch overhead that makes small-model decoding slow and adds
      padding work. Forcing the compilation anyway (an experiment in bench_decoding.py) made a
      7B shape's 4-bit decoding 2.0x faster (69.0 -> 34.3 ms a step at batch 64, H200); bf16
      weights with the compiled static cache were 3.7x (18.4 ms): for speed, generate in bf16
      (gen_quantization: none) where the card has room.
    - CPU: dynamic (measured, CPU_MEASURE); nothing is compiled on CPU.
    Explicit "static"/"dynamic" are honoured as asked.
    """
    if requested not in GEN_CACHES:
        raise CaiError(f"unknown gen_cache {requested!r}; use one of {', '.join(GEN_CACHES)}")
    why_not = _static_unsupported(model)
    if requested == "static":
        if why_not:
            raise CaiError(f"gen_cache: static is not possible here ({why_not}); set gen_cache: dynamic or auto")
        return "static", "requested"
    if requested == "dynamic":
        return "dynamic", "requested"
    if why_not:
        return "dynamic", f"auto: {why_not}"
    if _device_type(model) == "cpu":
        return "dynamic", CPU_MEASURE
    quant = _quantized(model)
    if quant or not compiles_decoding(model):
        return "dynamic", (f"auto: {quant or 'this'} model is not compiled by transformers, so a static cache "
                           "saves no launch overhead (gen_quantization: none decodes bf16, compiled)")
    if shapes == 0:
        return "static", "auto: CUDA, compiled static cache (shape already compiled in this process)"
    if decode_steps is not None and decode_steps < shapes * STATIC_MIN_STEPS:
        return "dynamic", (f"auto: {decode_steps} decoding steps do not pay for compiling {shapes} shape(s) "
                           f"(~{STATIC_MIN_STEPS} steps each, H200 measurement)")
    return "static", "auto: CUDA, compiled static cache (H200, 270M: 4.7 vs 40.1 ms per step at batch 64)"


def batch_bucket(rows: int, batch_size: int) -> int:
    """Rows a static-cache batch is padded to: the call's batch size, whatever `rows` is.

    One compiled shape per batch size. Padding rows copy a real row, finish when it does and
    so add no steps; on a launch-bound model they are nearly free, while a new shape costs a
    compilation (tens of seconds, issue 13's H200 measurement)."""
    if rows > batch_size:
        raise CaiError(f"batch_bucket: {rows} rows exceed the batch size {batch_size} - a bug in the caller")
    return batch_size


# Shapes (rows, cache length) whose decoding step this process has compiled, per model
# object. transformers keeps one static cache per model and compiles per shape (torch.compile
# with dynamic=False), so a shape seen once is free for the rest of the process.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _record_compiled(model, rows: int, cache_len: int) -> None:
    """Remember a static shape this process has decoded with, if transformers compiled it."""
    if not compiles_decoding(model):
        return
    try:
        _COMPILED.setdefault(_base_model(model), set()).add((rows, cache_len))
    except TypeError:  # an object that cannot be weakly referenced (test doubles): nothing to remember
        pass


def static_plan(model, rows: int, width: int, max_new_tokens: int) -> tuple[int, int]:
    """(cache length a static call would use, shapes it would newly compile: 0 or 1).

    The length is the bucket of the longest prompt + new tokens, or the model's existing
    longer cache (transformers reuses it). A shape counts as compiled when this process has
    compiled the same row count at that length."""
    length = max(cache_bucket(width + max_new_tokens), getattr(_base_model(model), "_previous_max_cache_length", 0) or 0)
    try:
        done = _COMPILED.get(_base_model(model), set())
    except TypeError:
        done = set()
    return length, int((rows, length) not in done)


def cache_bucket(length: int) -> int:
    """Static cache length for prompt width + new tokens: the next power of two >= MIN_CACHE_LEN.

    transformers also never shrinks a model's static cache between calls, so after the
    longest call every later one reuses the same length (one compiled shape per batch size).
    """
    return max(MIN_CACHE_LEN, 1 << max(0, length - 1).bit_length())
