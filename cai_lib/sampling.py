"""Seeded temperature sampling for self-consistency pairs (stage 01 only).

Evaluation is greedy (cai_lib.generate). The self_consistency pair strategy needs
several *different* answers from the base model to the same few-shot prompt, so this
module samples k continuations per prompt: temperature only (top_k = 0, top_p = 1, so a
model's own generation_config cannot quietly narrow the distribution), the same prompt
encoding as everywhere (cai_lib.guard: one BOS, no chat markers), stop strings, and
finish reasons as generate() records them.

KV cache: as generate() (`cache`, generate.pick_cache): under a static cache the rows are
padded to `batch_rows` with copies of the last row, so every call decodes at one compiled
shape; the padding rows draw from the RNG too, so a static and a dynamic run draw different
(equally seeded, equally reproducible) samples.

Reproducibility: the caller passes one seed per call; torch's RNG is seeded with it just
before decoding. The pair builder calls with fixed slices of its item list and a seed
derived from the slice's item ids, so a resumed run draws the same samples as an
uninterrupted one on the same device and library versions.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteriaList

from . import guard
from .errors import CaiError
from .generate import _StopStrings, _eos_ids, _pad_id, left_pad
from .kv_cache import _record_compiled, pick_cache, static_generation_kwargs, static_plan
from .prompts import cut_at_stop


def sample_generate(model, tokenizer, prompts: Sequence[str], *, k: int, temperature: float, max_new_tokens: int,
                    stop: list[str] | None = None, seed: int = 0, cache: str = "dynamic",
                    batch_rows: int | None = None) -> list[list[dict]]:
    """k sampled continuations per prompt, in one batch of len(prompts) * k rows.

    cache: a GEN_CACHES kind; batch_rows: the rows a static batch is padded to (default: the
    real rows). Returns per prompt a list of k records {response, finish_reason, new_tokens}."""
    if k < 1 or max_new_tokens < 1:
        raise CaiError(f"sample_generate: k and max_new_tokens must be >= 1 (got {k}, {max_new_tokens})")
    if not temperature > 0:
        raise CaiError(f"sample_generate: temperature must be > 0, got {temperature} — use greedy generate() instead")
    prompts = list(prompts)
    if not prompts:
        return []
    encoded = guard.encode_prompts(tokenizer, prompts)
    eos = _eos_ids(model, tokenizer)
    pad = _pad_id(tokenizer, eos)
    rows = [ids for ids in encoded for _ in range(k)]
    n_real = len(rows)
    width = max(len(x) for x in rows)
    full_rows = max(n_real, batch_rows or n_real)
    cache_len, new_shapes = static_plan(model, full_rows, width, max_new_tokens)
    kind, _ = pick_cache(model, cache, decode_steps=max_new_tokens, shapes=new_shapes)
    cache_kw = {}
    if kind == "static":
        rows += [rows[-1]] * (full_rows - n_real)
        cache_kw = static_generation_kwargs(model, cache_len)
    input_ids, attn = left_pad(model, rows, pad)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=float(temperature), top_k=0,
                           top_p=1.0, num_beams=1, eos_token_id=eos or None, pad_token_id=pad, **cache_kw)
    stopper = _StopStrings(tokenizer, stop, width, len(rows)) if stop else None
    torch.manual_seed(int(seed))
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attn, generation_config=cfg,
                             stopping_criteria=StoppingCriteriaList([stopper]) if stopper else None)
    if cache_kw:
        _record_compiled(model, len(rows), cache_len)
    new = out[:, width:].tolist()[:n_real]
    eos_set = set(eos)
    recs = []
    for r, row in enumerate(new):
        end, reason = len(row), "length"
        first_eos = next((j for j, t in enumerate(row) if t in eos_set), None)
        if stopper is not None and stopper.stopped_at[r] is not None and (
                first_eos is None or stopper.stopped_at[r] <= first_eos):
            end, reason = stopper.stopped_at[r], "stop"
        elif first_eos is not None:
            end, reason = first_eos + 1, "eos"
        text = tokenizer.decode([t for t in row[:end] if t not in eos_set], skip_special_tokens=True)
        if stop:
            text, hit = cut_at_stop(text, stop)
            reason = "stop" if hit else reason
        recs.append({"response": text, "finish_reason": reason, "new_tokens": end})
    return [recs[i * k:(i + 1) * k] for i in range(len(prompts))]
