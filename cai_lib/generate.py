"""Batched greedy decoding with finish reasons, stop strings and CUDA OOM back-off.

Greedy because the evaluation compares two models on the same prompts: sampling noise would
blur a paired comparison, and greedy makes a run reproducible. Batching changes numerics
slightly (padding, kernel shapes), so `determinism_check` measures how often batched output
equals batch-1 output instead of assuming it.

Evaluation passes no stop strings: knowing when to stop is part of following an
instruction, so a response that runs to `max_new_tokens` is recorded as `length`.

The KV cache (`cache`: dynamic, static or auto) and the shapes a static cache compiles are
decided in cai_lib.kv_cache.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from . import guard, scoring
from .errors import CaiError
# re-exported: callers and tests use them as generate.<name>
from .kv_cache import (CPU_MEASURE, MIN_CACHE_LEN, STATIC_MIN_STEPS, _base_model, _device_type,  # noqa: F401
                       _record_compiled, batch_bucket, cache_bucket, compiles_decoding, pick_cache,
                       static_generation_kwargs, static_plan)
from .prompts import cut_at_stop

# Above this share of batched outputs differing from batch-1 outputs the report flags the
# comparison (issue 13: "more than a few percent").
DISAGREE_LIMIT = 0.05


def _eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the generation config's eos ids, else the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = getattr(model.config, "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])]


def _pad_id(tokenizer, eos: list[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if eos:
        return eos[0]
    raise CaiError("the tokenizer has neither a pad nor an eos token; batched generation needs one - set tokenizer.pad_token")


class _StopStrings(StoppingCriteria):
    """Per-row stop on any stop string in the decoded new text; records where each row stopped."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_len: int, batch: int):
        self.tok, self.stop, self.prompt_len = tokenizer, list(stop), prompt_len
        self.stopped_at = [None] * batch  # number of new tokens when the stop string appeared

    def __call__(self, input_ids, scores, **kwargs):
        done = []
        for r in range(input_ids.shape[0]):
            if self.stopped_at[r] is not None:
                done.append(True)
                continue
            new = input_ids[r, self.prompt_len:]
            text = self.tok.decode(new, skip_special_tokens=True)
            hit = any(s in text for s in self.stop)
            if hit:
                self.stopped_at[r] = int(new.shape[0])
            done.append(hit)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def left_pad(model, rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) on the model's device, every prompt right-aligned.

    Left padding: every prompt ends at the same column, so the new tokens of every row start
    together and greedy decoding sees each prompt exactly as at batch 1."""
    width = max(len(x) for x in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attn[r, width - len(ids):] = 1
    device = getattr(model, "device", torch.device("cpu"))
    return input_ids.to(device), attn.to(device)


def _run_batch(model, tokenizer, batch_ids: list[list[int]], *, max_new_tokens: int, stop, eos, pad,
               cache: str = "dynamic", pad_rows_to: int | None = None, stats: dict | None = None) -> list[dict]:
    n_real = len(batch_ids)
    # Padding rows copy the last real row: they finish when it does, so they never add steps.
    rows = list(batch_ids) + [batch_ids[-1]] * max(0, (pad_rows_to or n_real) - n_real)
    input_ids, attn = left_pad(model, rows, pad)
    width = input_ids.shape[1]
    cache_kw = {}
    if cache == "static":
        # the length transformers will use: this batch's bucket or the model's longer cache
        cache_len, _ = static_plan(model, len(rows), width, max_new_tokens)
        cache_kw = static_generation_kwargs(model, cache_len)
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        eos_token_id=eos or None, pad_token_id=pad, **cache_kw,
    )
    stopper = _StopStrings(tokenizer, stop, width, len(rows)) if stop else None
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=attn, generation_config=gen_cfg,
            stopping_criteria=StoppingCriteriaList([stopper]) if stopper else None,
        )
    new = out[:, width:].tolist()
    if stats is not None:
        steps = out.shape[1] - width  # decoding steps this batch ran: every row pays each one
        stats["steps"] += steps
        stats["row_steps"] += len(rows) * steps
        stats["padded_rows"] += len(rows) - n_real
        stats["shapes"].add((len(rows), cache_kw.get("max_cache_len", 0)))
    if cache_kw:
        _record_compiled(model, len(rows), cache_kw["max_cache_len"])
    recs = []
    eos_set = set(eos)
    for r, ids in enumerate(batch_ids):
        row = new[r]
        end = len(row)
        reason = "length"
        first_eos = next((k for k, t in enumerate(row) if t in eos_set), None)
        if stopper is not None and stopper.stopped_at[r] is not None and (first_eos is None or stopper.stopped_at[r] <= first_eos):
            end, reason = stopper.stopped_at[r], "stop"
        elif first_eos is not None:
            end, reason = first_eos + 1, "eos"  # the eos token counts as generated
        text_ids = [t for t in row[:end] if t not in eos_set]
        text = tokenizer.decode(text_ids, skip_special_tokens=True)
        if stop:
            text, hit = cut_at_stop(text, stop)
            if hit:
                reason = "stop"
        recs.append({"response": text, "finish_reason": reason, "prompt_tokens": len(ids), "new_tokens": end})
    return recs


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8,
             stop: list[str] | None = None, progress: bool = True, desc: str = "generate",
             cache: str = "auto", info: dict | None = None) -> list[dict]:
    """Greedy continuations of `prompts`, in input order.

    Each record: {response, finish_reason (eos|length|stop), prompt_tokens, new_tokens, seconds}.
    `seconds` is the record's share of its batch's wall time (batch time / rows), so summing
    it over records gives the total decoding time. Prompts are encoded by the guard (one
    BOS, no chat markers) and batched longest-first so similar lengths share a batch (less
    padding) and an out-of-memory shows up on the first batch. On CUDA OOM the batch size is
    halved and the batch retried; the smaller size is kept for the rest.

    cache: one of GEN_CACHES (see pick_cache). Under auto, a batch that fails with the static
    cache is retried with the dynamic one, which decodes the rest of the call (`info` names the
    error under "fallback"); an explicit static that fails is a one-line CaiError.
    info: a dict filled with how the call decoded - cache kind and why, whether the decoding
    step was compiled, the (rows, cache length) shapes used, fallback, and the row-steps paid
    against the tokens kept (the cost of rows that finished early but stayed in their batch).
    """
    from tqdm import tqdm  # text bars: they render in the executed notebook and its HTML

    if max_new_tokens < 1:
        raise CaiError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise CaiError(f"batch_size must be >= 1, got {batch_size}")
    prompts = list(prompts)
    encoded = guard.encode_prompts(tokenizer, prompts)
    for i, ids in enumerate(encoded):
        if not ids:
            raise CaiError(f"prompt {i} is empty and the model uses no BOS; give it some text")
    n_batches = -(-len(prompts) // batch_size)
    # every static batch is padded to batch_size: one shape per call (see batch_bucket)
    _, new_shapes = static_plan(model, batch_size, max((len(x) for x in encoded), default=1), max_new_tokens)
    kind, why = pick_cache(model, cache, decode_steps=n_batches * max_new_tokens, shapes=new_shapes)
    eos = _eos_ids(model, tokenizer)
    pad = _pad_id(tokenizer, eos)
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    results: list[dict | None] = [None] * len(prompts)
    stats = {"steps": 0, "row_steps": 0, "padded_rows": 0, "shapes": set()}
    fallback = None
    bs = batch_size
    pos = 0
    with tqdm(total=len(prompts), desc=desc, disable=not progress) as bar:
        while pos < len(order):
            idx = order[pos:pos + bs]
            t0 = time.perf_counter()
            try:
                recs = _run_batch(model, tokenizer, [encoded[i] for i in idx],
                                  max_new_tokens=max_new_tokens, stop=stop, eos=eos, pad=pad, cache=kind,
                                  pad_rows_to=batch_bucket(len(idx), bs) if kind == "static" else None,
                                  stats=stats)
            except torch.cuda.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if bs == 1:
                    raise CaiError(
                        "CUDA out of memory at batch size 1; lower max_new_tokens, load the model in "
                        "4-bit (quantization: 4bit), or use a larger GPU"
                    ) from None
                bs = max(1, bs // 2)
                bar.write(f"{desc}: CUDA out of memory, retrying with batch size {bs}")
                continue
            except CaiError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the static path, see below
                if kind != "static":
                    raise
                if cache == "static":
                    raise CaiError(f"gen_cache: static failed for this model ({_first_line(exc)}); "
                                   "set gen_cache: dynamic or auto") from None
                # auto chose static on this device's record; this model/library disagrees.
                # Decoding continues, and the report sees the fallback in `info`.
                kind, fallback = "dynamic", _first_line(exc)
                bar.write(f"{desc}: static KV cache failed ({fallback}); continuing with the dynamic cache")
                continue
            dt = time.perf_counter() - t0
            for i, rec in zip(idx, recs):
                rec["seconds"] = dt / len(idx)
                results[i] = rec
            pos += len(idx)
            bar.update(len(idx))
    if info is not None:
        kept = sum(r["new_tokens"] for r in results)  # type: ignore[index]
        info.update({"cache": kind, "cache_reason": why, "fallback": fallback,
                     "compiled": kind == "static" and compiles_decoding(model),
                     "shapes": sorted(stats["shapes"]), "batch_size": bs, "padded_rows": stats["padded_rows"],
                     "steps": stats["steps"], "row_steps": stats["row_steps"], "new_tokens": kept,
                     "row_step_use": kept / stats["row_steps"] if stats["row_steps"] else float("nan")})
    return results  # type: ignore[return-value]


def _compare(batched: Sequence[dict], single: Sequence[dict], prompts: Sequence[str]) -> tuple[int, list[dict]]:
    mismatches = [
        {"index": i, "prompt": p, "batched": b["response"], "single": s["response"]}
        for i, (p, b, s) in enumerate(zip(prompts, batched, single))
        if b["response"] != s["response"]
    ]
    return len(prompts) - len(mismatches), mismatches


def determinism_check(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int,
                      cache: str = "auto") -> dict:
    """How often batched greedy output equals batch-1 greedy output on the same prompts.

    Padding and different matmul shapes change low-order bits; greedy decoding can then
    take a different branch at a near-tie. The rate is reported, not enforced. Both runs use
    the same weights and the same cache kind (the path evaluation used).
    """
    prompts = list(prompts)
    info: dict = {}
    batched = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=False, desc="determinism: batched", cache=cache, info=info)
    single = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=1,
                      progress=False, desc="determinism: batch 1", cache=info.get("cache", cache))
    agree, mismatches = _compare(batched, single, prompts)
    n = len(prompts)
    return {"n": n, "agree": agree, "rate": agree / n if n else float("nan"),
            "batch_size": batch_size, "max_new_tokens": max_new_tokens, "cache": info.get("cache", cache),
            "mismatches": mismatches}


RATE_FIELDS = ("strict", "loose", "form")


def comparability_certificate(model, tokenizer, items: Sequence[dict], *, max_new_tokens: int, batch_size: int,
                              cache: str = "auto", sample: int | None = None, progress: bool = False) -> dict:
    """Batched fast-path decoding against batch-1 decoding on a sample of eval items.

    Same weights, same cache kind, same prompts: the only difference is the batch. Returns
    how many responses are identical, and the strict/loose/form rates of each run (scored
    with cai_lib.scoring) with their differences and per-item flips - whether batching moved
    the *rates*, not only the strings. `flagged` is True when more than DISAGREE_LIMIT of the
    items differ; the report says so in its verdict box.
    """
    items = list(items)[:sample] if sample else list(items)
    if not items:
        raise CaiError("comparability_certificate needs at least one eval item")
    for k, it in enumerate(items):
        if "instruction" not in it or "checks" not in it:
            raise CaiError(f"eval item {k + 1} lacks 'instruction' or 'checks' - pass the eval items (eval_instructions.jsonl)")
    prompts = [it["instruction"] for it in items]
    info_b: dict = {}
    info_1: dict = {}
    batched = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=progress, desc="certificate: batched", cache=cache, info=info_b)
    single = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=1,
                      progress=progress, desc="certificate: batch 1", cache=info_b["cache"], info=info_1)
    sb = scoring.score_records([{**it, **o} for it, o in zip(items, batched)], "certificate batched")
    s1 = scoring.score_records([{**it, **o} for it, o in zip(items, single)], "certificate batch-1")
    rb, r1 = scoring.summarize(sb, by=()), scoring.summarize(s1, by=())
    identical, mismatches = _compare(batched, single, prompts)
    n = len(items)
    return {
        "n": n, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
        "cache": info_b["cache"], "compiled": info_b["compiled"], "cache_reason": info_b["cache_reason"],
        "fallback": info_b["fallback"] or info_1["fallback"],
        "identical": identical, "identical_rate": identical / n,
        "batched": {f: rb[f] for f in RATE_FIELDS}, "batch1": {f: r1[f] for f in RATE_FIELDS},
        "delta": {f: rb[f] - r1[f] for f in RATE_FIELDS},
        "flips": {f: sum(bool(a[f]) != bool(b[f]) for a, b in zip(sb, s1)) for f in RATE_FIELDS},
        "disagree_limit": DISAGREE_LIMIT, "flagged": (n - identical) / n > DISAGREE_LIMIT,
        "mismatches": mismatches[:20],
    }


def throughput(records: Sequence[dict]) -> dict:
    """Generated tokens per second over a set of generate() records."""
    toks = sum(r["new_tokens"] for r in records)
    secs = sum(r["seconds"] for r in records)
    return {"n": len(records), "new_tokens": toks, "seconds": secs,
            "tokens_per_s": toks / secs if secs > 0 else float("nan")}
