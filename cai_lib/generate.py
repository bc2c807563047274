"""Batched greedy decoding with finish reasons, stop strings and CUDA OOM back-off.

Greedy because the evaluation compares two models on the same prompts: sampling noise would
blur a paired comparison, and greedy makes a run reproducible. Batching changes numerics
slightly (padding, kernel shapes), so `determinism_check` measures how often batched output
equals batch-1 output instead of assuming it.

Evaluation passes no stop strings: knowing when to stop is part of following an
instruction, so a response that runs to `max_new_tokens` is recorded as `length`.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from . import guard
from .errors import CaiError
from .prompts import cut_at_stop


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


def _run_batch(model, tokenizer, batch_ids: list[list[int]], *, max_new_tokens: int, stop, eos, pad) -> list[dict]:
    width = max(len(x) for x in batch_ids)
    # Left padding: every prompt ends at the same column, so the new tokens of every row
    # start together and greedy decoding sees each prompt exactly as at batch 1.
    input_ids = torch.full((len(batch_ids), width), pad, dtype=torch.long)
    attn = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for r, ids in enumerate(batch_ids):
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attn[r, width - len(ids):] = 1
    device = getattr(model, "device", torch.device("cpu"))
    input_ids, attn = input_ids.to(device), attn.to(device)
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        eos_token_id=eos or None, pad_token_id=pad,
    )
    stopper = _StopStrings(tokenizer, stop, width, len(batch_ids)) if stop else None
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=attn, generation_config=gen_cfg,
            stopping_criteria=StoppingCriteriaList([stopper]) if stopper else None,
        )
    new = out[:, width:].tolist()
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


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8,
             stop: list[str] | None = None, progress: bool = True, desc: str = "generate") -> list[dict]:
    """Greedy continuations of `prompts`, in input order.

    Each record: {response, finish_reason (eos|length|stop), prompt_tokens, new_tokens, seconds}.
    `seconds` is the record's share of its batch's wall time (batch time / rows), so summing
    it over records gives the total decoding time. Prompts are encoded by the guard (one
    BOS, no chat markers) and batched longest-first so similar lengths share a batch (less
    padding) and an out-of-memory shows up on the first batch. On CUDA OOM the batch size is
    halved and the batch retried; the smaller size is kept for the rest.
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
    eos = _eos_ids(model, tokenizer)
    pad = _pad_id(tokenizer, eos)
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    results: list[dict | None] = [None] * len(prompts)
    bs = batch_size
    pos = 0
    with tqdm(total=len(prompts), desc=desc, disable=not progress) as bar:
        while pos < len(order):
            idx = order[pos:pos + bs]
            t0 = time.perf_counter()
            try:
                recs = _run_batch(model, tokenizer, [encoded[i] for i in idx],
                                  max_new_tokens=max_new_tokens, stop=stop, eos=eos, pad=pad)
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
            dt = time.perf_counter() - t0
            for i, rec in zip(idx, recs):
                rec["seconds"] = dt / len(idx)
                results[i] = rec
            pos += len(idx)
            bar.update(len(idx))
    return results  # type: ignore[return-value]


def determinism_check(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int) -> dict:
    """How often batched greedy output equals batch-1 greedy output on the same prompts.

    Padding and different matmul shapes change low-order bits; greedy decoding can then
    take a different branch at a near-tie. The rate is reported, not enforced.
    """
    prompts = list(prompts)
    batched = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=False, desc="determinism: batched")
    single = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=1,
                      progress=False, desc="determinism: batch 1")
    mismatches = [
        {"index": i, "prompt": p, "batched": b["response"], "single": s["response"]}
        for i, (p, b, s) in enumerate(zip(prompts, batched, single))
        if b["response"] != s["response"]
    ]
    n = len(prompts)
    agree = n - len(mismatches)
    return {"n": n, "agree": agree, "rate": agree / n if n else float("nan"),
            "batch_size": batch_size, "max_new_tokens": max_new_tokens, "mismatches": mismatches}


def throughput(records: Sequence[dict]) -> dict:
    """Generated tokens per second over a set of generate() records."""
    toks = sum(r["new_tokens"] for r in records)
    secs = sum(r["seconds"] for r in records)
    return {"n": len(records), "new_tokens": toks, "seconds": secs,
            "tokens_per_s": toks / secs if secs > 0 else float("nan")}


def measure_throughput(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int) -> dict:
    """Run generate once and return throughput() plus the batch size (for benchmarks)."""
    recs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    return {"batch_size": batch_size, **throughput(recs)}
