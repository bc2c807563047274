"""Greedy decoding that drops finished rows every few tokens (dynamic KV cache only).

In one `model.generate()` call a batch decodes until its *last* row finishes: a row that ended
with EOS at token 3 still pays every later step. A trained model answers in a few tokens and a
base model rambles, so evaluation batches are mostly finished rows: on the 2-core CPU the
trained arm of cpu-quick kept 1,004 of 5,760 row-steps (120 items x 48 tokens) and the few-shot
arm 1,024. Decoding in chunks of `chunk` tokens and selecting the unfinished rows of the
dynamic cache in between (DynamicCache.batch_select_indices) makes a finished row cost at most
`chunk` extra steps.

Only where it is sound and pays:
- the dynamic cache (a static cache's compiled shape is fixed; dropping rows would recompile);
- CPU, where a step costs in proportion to its rows and fp32 decoding measured batch-invariant
  (batched equal to batch-1 output in every CPU comparison, reports/benchmarks.md), so a row's
  text does not depend on which rows it shares later steps with. On a GPU a step is bound by
  launch overhead, not rows, and bf16 kernels are not batch-invariant: there it stays off.

The caller gets, per row, every token generated for it (tokens after its EOS may be pad) and
where a stop string ended it, exactly what one generate() call would have given up to the
row's end.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteriaList

# New tokens per chunk: a finished row costs at most this many extra steps; each chunk costs one
# generate() call's set-up (milliseconds on CPU).
CHUNK = 8


def decode_dropping(model, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    max_new_tokens: int, eos: Sequence[int], pad: int, stop: Sequence[str] | None,
                    stopper_cls, chunk: int | None = None) -> tuple[list[list[int]], list[int | None], dict]:
    """(new tokens per row, stop position per row, {"steps", "row_steps"}) for a left-padded batch.

    `stopper_cls` is generate._StopStrings (passed in to keep the import one-way); stop
    positions count new tokens from the original prompt width, as in one generate() call.
    """
    chunk = CHUNK if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n, width = input_ids.shape
    new: list[list[int]] = [[] for _ in range(n)]
    stopped: list[int | None] = [None] * n
    alive = list(range(n))
    eos_set = set(int(t) for t in eos)
    ids, mask, cache, cache_name = input_ids, attention_mask, None, "past_key_values"
    steps = row_steps = 0
    while alive:
        done = len(new[alive[0]])  # every alive row has decoded the same number of tokens
        if done >= max_new_tokens:
            break
        cfg = GenerationConfig(max_new_tokens=min(chunk, max_new_tokens - done), do_sample=False, num_beams=1,
                               eos_token_id=list(eos_set) or None, pad_token_id=pad, return_dict_in_generate=True)
        stopper = stopper_cls(tokenizer, stop, width, len(alive)) if stop else None
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                                 stopping_criteria=StoppingCriteriaList([stopper]) if stopper else None,
                                 **({} if cache is None else {cache_name: cache}))
        seq = out.sequences
        # transformers 5.24 names the cache `cache` (in the output and as generate's argument);
        # 5.17, the GPU set, `past_key_values`: use whichever the output carries
        cache_name = "cache" if "cache" in out else "past_key_values"
        cache = out[cache_name]
        got = seq[:, ids.shape[1]:]
        ran = got.shape[1]
        steps += ran
        row_steps += ran * len(alive)
        keep = []
        for j, r in enumerate(alive):
            toks = got[j].tolist()
            new[r].extend(toks)
            hit = stopper is not None and stopper.stopped_at[j] is not None
            if hit:
                stopped[r] = stopper.stopped_at[j]
            if not hit and not any(t in eos_set for t in toks):
                keep.append(j)
        # every token the alive rows generated is real (none has ended), so the mask grows by ones
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], ran))], dim=1)
        if len(keep) < len(alive) and keep:
            idx = torch.tensor(keep, dtype=torch.long, device=seq.device)
            cache.batch_select_indices(idx)
            seq, mask = seq[idx], mask[idx]
        alive = [alive[j] for j in keep]
        ids = seq
    return new, stopped, {"steps": steps, "row_steps": row_steps}
